"""Scalars to metrics.jsonl (always) and to the run's loggers (TensorBoard here; W&B and MLflow in loggers.py), the same
values at the same env steps in all of them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from marlrun.errors import UserError, write_failed

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def write_json(path: str | Path, data) -> None:
    """Write ``data`` as JSON through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    except OSError as exc:
        error = write_failed(path, exc)
        tmp.unlink(missing_ok=True)
        raise error from None


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
    """The records of a run folder's ``metrics.jsonl``, in file order. The one reader of that file (resume, report,
    sweep summaries, search objectives and bench all read it here), with one policy:

    - no file: no records (``[]``); a file that exists but cannot be read: a UserError;
    - blank lines are skipped;
    - every other line must be a JSON object with an integer ``step`` (non-finite values come back as written,
      ``NaN`` and ``Infinity``);
    - except the last line when no newline ends it and it is not valid JSON: a record cut short by a process that
      died (or a disk that filled) while writing it. It is left out, silently;
    - any other line that breaks the rule is a UserError naming the file and the line number (from 1). A line is
      never skipped, so no reader sees a history with a hole in it; a caller that goes on without the run (``marlrun
      report``, a sweep job's objective) turns the error into that run's problem.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__}); move it away to go on without the run's history") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # not JSON, or not UTF-8 (json.JSONDecodeError and UnicodeDecodeError)
            if number == len(lines):  # no newline after it: a record cut short
                continue
            raise UserError(f"{path}: line {number} is not a JSON record; repair or remove that line (or move the file away)") from None
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise UserError(f"{path}: line {number} is not a metrics record (no integer 'step'); repair or remove that line")
        records.append(record)
    return records


def cut_short_last_line(run_dir: str | Path) -> bool:
    """Whether ``metrics.jsonl`` ends with a record cut short (the one line ``read_metrics`` leaves out silently)."""
    path = Path(run_dir) / METRICS_FILE
    try:
        last = path.read_bytes().rsplit(b"\n", 1)[-1]
    except OSError:
        return False
    if not last.strip():
        return False
    try:
        json.loads(last.decode("utf-8"))
    except ValueError:
        return True
    return False


class Logger:
    """Where a run's scalars go besides metrics.jsonl. Built before the run builds anything (a logger that cannot start
    says so then, in one line); started when metrics.jsonl opens; told every record; closed when the run ends."""

    name = ""

    def start(self, resume_step: int | None) -> None:
        """``resume_step``: the env step of the checkpoint a resumed run continues from (None for a fresh run)."""

    def write(self, step: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self, failed: bool = False) -> None:
        """``failed``: the run ends with an error."""


class TensorBoardLogger(Logger):
    """Event files in the run folder; a resumed run purges the steps logged after its checkpoint."""

    name = "tensorboard"

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.tb: SummaryWriter | None = None

    def start(self, resume_step: int | None) -> None:
        self.tb = SummaryWriter(log_dir=str(self.run_dir), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        try:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, step)
            self.tb.flush()
        except OSError as exc:
            raise write_failed(Path(self.tb.log_dir) / "events.out.tfevents", exc) from None

    def close(self, failed: bool = False) -> None:
        if self.tb is None:
            return
        try:
            self.tb.close()
        except OSError:  # a full disk: what could be written was, and the error was reported when it happened
            pass


class MetricWriter:
    """Writes one record per log step to ``metrics.jsonl`` and to each of ``loggers`` (default: TensorBoard).

    ``resume_step`` drops records written after that step by an earlier process
    (a run killed between its last checkpoint and its last log), in metrics.jsonl and TensorBoard.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, loggers: list[Logger] | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(run_dir) if r["step"] <= resume_step]
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            try:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
                os.replace(tmp, self.path)
            except OSError as exc:
                error = write_failed(self.path, exc)
                tmp.unlink(missing_ok=True)
                raise error from None
        self.loggers = [TensorBoardLogger(run_dir)] if loggers is None else list(loggers)
        started: list[Logger] = []
        try:
            for logger in self.loggers:
                logger.start(resume_step)
                started.append(logger)
            self.file = open(self.path, "ab", buffering=0)  # every record goes straight to the file: nothing left in a buffer
        except BaseException:
            for logger in started:
                logger.close(failed=True)
            raise

    @property
    def tb(self) -> SummaryWriter | None:
        """The TensorBoard writer, when TensorBoard is one of the loggers."""
        return next((logger.tb for logger in self.loggers if isinstance(logger, TensorBoardLogger)), None)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """One record, whole or not at all: a write that fails (a full disk) is cut back off the file. Non-finite
        values are written as they are (``NaN``, ``Infinity``, as Python's json reads them) everywhere."""
        line = (json.dumps({"step": step, **scalars}) + "\n").encode()
        end = os.fstat(self.file.fileno()).st_size  # (in append mode the file position says nothing until a write)
        try:
            written = 0
            while written < len(line):  # an unbuffered write may take only part of it
                written += self.file.write(line[written:])
        except OSError as exc:
            try:
                self.file.truncate(end)
            except OSError:
                pass
            raise write_failed(self.path, exc) from None
        for logger in self.loggers:
            logger.write(step, scalars)

    def close(self, failed: bool = False) -> None:
        self.file.close()  # unbuffered: closing writes nothing
        for logger in self.loggers:
            logger.close(failed=failed)
