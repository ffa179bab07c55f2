"""The console every command prints to (stderr, so that stdout stays for what a command is asked to print), and the
notice a slow step gives."""

from __future__ import annotations

import threading

from rich.console import Console

console = Console(stderr=True)

SLOW_AFTER_S = 15.0  # a step of set-up, the first training step or an evaluation says so once when it takes longer


class taking_long:
    """Says once, on stderr, when ``what`` has run for SLOW_AFTER_S seconds and is not done, with how to stop it: a
    set-up step or a step of training that the config made huge would otherwise run with nothing printed. A context
    manager; ``done()`` ends it early."""

    def __init__(self, what: str, hint: str = "Ctrl-C stops it"):
        after = SLOW_AFTER_S
        self.timer = threading.Timer(after, lambda: console.print(f"marlrun: {what} has taken {after:.0f} s so far; {hint}",
                                                                  soft_wrap=True, markup=False, highlight=False))
        self.timer.daemon = True

    def __enter__(self):
        self.timer.start()
        return self

    def done(self) -> None:
        self.timer.cancel()

    def __exit__(self, *exc):
        self.done()
