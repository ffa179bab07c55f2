"""The one exception type for a user's mistake: the CLI prints its message on one line and exits non-zero."""

from __future__ import annotations

import errno
import shutil
import sys
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix (bad config value, missing GPU, unreadable checkpoint...).

    The message says what was wrong and how to fix it; no traceback is shown.
    """


def warn(message: str) -> None:
    """A setting that has no effect, or a run that will not do what its name says: one line on stderr, and the run goes on."""
    print(f"marlrun: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


def require(ok: bool, key: str, message: str) -> None:
    """A config schema's range check: a UserError ``key: message`` unless ``ok``."""
    if not ok:
        raise UserError(f"{key}: {message}")


def require_batch_fits(batch_size: int, buffer_size: int) -> None:
    require(batch_size <= buffer_size, "algo.batch_size",
            f"a minibatch of {batch_size} cannot come from a replay of {buffer_size}; lower algo.batch_size or raise algo.buffer_size")


def require_one_of(value, options, key: str, what: str = "value") -> None:
    """A config schema's check that ``value`` is one of ``options``."""
    require(value in options, key, f"unknown {what} '{value}'; pick one of {', '.join(map(str, options))}")


def write_failed(path: Path, exc: BaseException) -> UserError:
    """A write that failed (a full disk, most often) as one line naming the folder. Call it before removing the
    partial file: torch reports a full disk only as a failed C++ write, so the disk's free space tells."""
    try:
        usage = shutil.disk_usage(path.parent)
        nearly_full = usage.free < max(2**20, usage.total // 1000)
    except OSError:
        nearly_full = False
    full = getattr(exc, "errno", None) == errno.ENOSPC or nearly_full
    reason = "no space left on device" if full else (getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200])
    return UserError(f"cannot write {path.name} in {path.parent}: {reason}; everything written before it is kept")
