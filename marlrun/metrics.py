"""Scalars to TensorBoard and to metrics.jsonl, the same values in both."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def write_json(path: str | Path, data) -> None:
    """Write ``data`` as JSON through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class MeanTracker:
    """Running means of scalars between two log steps; values may be 0-d tensors (read only at log time)."""

    def __init__(self):
        self.sums: dict[str, float | torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, scalars: dict) -> None:
        for key, value in scalars.items():
            self.sums[key] = self.sums.get(key, 0.0) + (value.detach() if isinstance(value, torch.Tensor) else value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def pop(self) -> dict[str, float]:
        means = {key: float(total) / self.counts[key] for key, total in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means

    def state_dict(self) -> dict:
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricWriter:
    """Writes one record per log step to TensorBoard and to ``metrics.jsonl``.

    ``resume_step`` drops records written after that step by an earlier process
    (a run killed between its last checkpoint and its last log), in both files.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(run_dir) if r["step"] <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)
        self.tb = SummaryWriter(log_dir=str(run_dir), purge_step=None if resume_step is None else resume_step + 1)
        self.file = open(self.path, "a")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        clean = {k: v for k, v in scalars.items() if math.isfinite(v)}
        for key, value in clean.items():
            self.tb.add_scalar(key, value, step)
        self.file.write(json.dumps({"step": step, **clean}) + "\n")
        self.file.flush()
        self.tb.flush()

    def close(self) -> None:
        self.file.close()
        self.tb.close()
