"""Checkpoints: tensors and plain data, written atomically, loaded without executing code."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from marlrun.errors import UserError, write_failed

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_paths(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: Path) -> int:
    """The env step a checkpoint file holds, from its name (``step_0000004000.pt``: 4000)."""
    return int(_NAME.match(Path(path).name).group(1))


def remove_stale_temp_files(run_dir: str | Path) -> None:
    """Temporary files an earlier process left when it died mid-write (the run's lock says none is writing now)."""
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINT_DIR):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep: int) -> Path:
    """Write ``checkpoints/step_<step>.pt`` via a temporary file and a rename, then prune to ``keep`` files. A write
    that fails (a full disk) removes its temporary file and raises a UserError; the older checkpoints stay."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:010d}.pt"
    tmp = folder / f".{path.name}.tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as a RuntimeError from its C++ writer
        error = write_failed(path, exc)
        tmp.unlink(missing_ok=True)
        raise error from None
    for old in checkpoint_paths(run_dir)[:-keep]:
        old.unlink()
    return path


RUN_STATE_KEYS = ("algo", "env_steps")  # what eval and frozen opponents read; a resume reads RESUME_KEYS too
RESUME_KEYS = ("tracker", "recent_returns", "evals", "wall_time", "resumes", "torch_rng")


OTHER_CHECKPOINT = ("Move it out of checkpoints/ to resume from the newest one left (keep_checkpoints > 1 keeps older ones), "
                    "or evaluate another with marlrun eval RUN_DIR checkpoint=STEP")


def load_checkpoint(path: str | Path, map_location="cpu", required: tuple[str, ...] = RUN_STATE_KEYS) -> dict:
    """Load with ``weights_only=True``; a missing or corrupt file, or one without the ``required`` keys, is a UserError."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # truncated, not a torch file, or holds objects other than tensors and plain data
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}); it is corrupt or not a marlrun checkpoint. {OTHER_CHECKPOINT}") from None
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise UserError(f"checkpoint {path} is not a marlrun checkpoint (it has no {', '.join(missing)}). {OTHER_CHECKPOINT}")
    return state
