"""The console every command prints to (stderr, so that stdout stays for what a command is asked to print)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)
