"""Checkpoints: tensors and plain data, written atomically, loaded without executing code."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from marlrun.errors import UserError

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_paths(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep: int) -> Path:
    """Write ``checkpoints/step_<step>.pt`` via a temporary file and a rename, then prune to ``keep`` files."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:010d}.pt"
    tmp = folder / f".{path.name}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in checkpoint_paths(run_dir)[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load with ``weights_only=True``; a missing or corrupt file is a UserError."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # truncated, not a torch file, or holds objects other than tensors and plain data
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}); it is corrupt or not a marlrun checkpoint. Pick another one from {Path(path).parent}") from None
