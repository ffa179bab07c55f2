"""Sweeps that survive interruptions: stopped by time_limit or SIGTERM and continued in place by the same command,
requeued by submitit after a time-out, and `marlrun sweep status` showing each job's state."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from marlrun.cli import main
from marlrun.metrics import read_metrics

ISING = ["env=ising", "algo=mfq", "env.L=8", "log_interval=100", "eval_interval=200", "eval_episodes=2",
         "checkpoint_interval=200", "algo.learning_starts=100", "hardware.torch_threads=1", "progress=false", "print_config=false"]
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]


def summaries(sweep: Path) -> list[dict]:
    return [json.loads((sweep / str(job) / "summary.json").read_text()) for job in range(4)]


def test_a_sweep_stopped_by_its_time_limit_continues_in_place_and_logs_every_step_once(tmp_path):
    sweep = tmp_path / "sweep"
    grid = [*ISING, *JOBLIB, "total_steps=12000", "log_interval=1000", "eval_interval=4000", "checkpoint_interval=2000",
            "seed=0,1", "algo.lr=1e-4,1e-3"]
    # 15 s from the command's start: the first two jobs (12,000 steps: 20 s or more each) stop part-way with a
    # checkpoint, the other two never start (on a machine so loaded that the jobs take over 15 s to start, all four
    # are skipped: the continuation below then starts them all; the SIGTERM test resumes part-way jobs whatever the load)
    stopped = run_cli("train", "-m", *grid, "time_limit=15s", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    first = summaries(sweep)
    skipped = "skipped: time_limit=15s had passed before this job started"
    assert all(s["status"] in ("stopped by time_limit", skipped) for s in first[:2])
    for job, s in enumerate(first[:2]):
        if s["status"] == "stopped by time_limit":
            assert 0 < s["env_steps"] < 12000 and list((sweep / str(job) / "checkpoints").glob("step_*.pt"))
    assert [s["status"] for s in first[2:]] == [skipped] * 2
    assert f"marlrun train -m resume={sweep}" in stopped.stderr
    logged = {job: read_metrics(sweep / str(job)) for job in (0, 1) if first[job]["status"] != skipped}  # up to the stop

    status = run_cli("sweep", "status", str(sweep), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    jobs = json.loads(status.stdout)
    assert [j["state"] for j in jobs][2:] == ["not started", "not started"]
    assert [j["state"] == "part-way" for j in jobs[:2]] == [s["status"] != skipped for s in first[:2]]
    assert all(j["env_steps"] == s["env_steps"] for j, s in zip(jobs[:2], first) if s["status"] != skipped)
    assert jobs[0]["total_steps"] == 12000 and all(j["time_left_s"] is None or j["time_left_s"] > 0 for j in jobs)
    table = run_cli("sweep", "status", str(sweep), cwd=tmp_path).stdout
    assert "not started" in table and "continue it" in table

    # a different sweep into the same folder is refused in one line, and changes nothing there
    before = {p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file()}
    other = run_cli("train", "-m", *[g for g in grid if not g.startswith("seed=")], "seed=0,1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert other.returncode == 2 and other.stderr.count("\n") == 1
    assert "holds another sweep: it ran seed=0,1 where this command gives seed=0,1,2" in other.stderr
    assert {p: p.stat().st_mtime_ns for p in sweep.rglob("*") if p.is_file()} == before

    # the same command again (without the limit): stopped jobs resume, the others start, every job finishes
    again = run_cli("train", "-m", *grid, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "continuing the sweep in its folder" in again.stderr
    assert ("resuming from its checkpoint" in again.stderr) == bool(logged)
    assert [s["status"] for s in summaries(sweep)] == ["finished"] * 4
    for job in range(4):
        assert [r["step"] for r in read_metrics(sweep / str(job))] == [0, *range(1000, 12001, 1000)]  # each step once
    for job, before in logged.items():  # what a stopped job logged stays as it was; the resume goes on after it
        assert read_metrics(sweep / str(job))[: len(before)] == before
    # and once more: nothing left to do, finished jobs are left as they are
    kept = (sweep / "0" / "metrics.jsonl").read_bytes()
    done = run_cli("train", "-m", "resume=" + str(sweep), "time_limit=1h", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("finished before; left as it is") == 4 and (sweep / "0" / "metrics.jsonl").read_bytes() == kept


def test_sigterm_to_a_joblib_sweep_checkpoints_every_running_job_leaves_no_process_and_the_sweep_continues(tmp_path):
    sweep = tmp_path / "sweep"
    grid = [*ISING, *JOBLIB, "total_steps=8000", "log_interval=200", "seed=0,1,2"]
    proc = subprocess.Popen([sys.executable, "-m", "marlrun.cli", "train", "-m", *grid, f"hydra.sweep.dir={sweep}"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def training(job: str) -> bool:  # a record after the step-0 evaluation
        return (sweep / job / "metrics.jsonl").exists() and (read_metrics(sweep / job) or [{"step": 0}])[-1]["step"] > 0

    deadline = time.monotonic() + 120
    while not all(training(job) for job in ("0", "1")) and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = children(proc.pid)  # joblib's worker processes, and loky's resource tracker
    proc.send_signal(signal.SIGTERM)  # to the sweep's process only, as `kill PID` or `timeout` sends it
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "stopping the sweep" in err and "Traceback" not in err
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "stopped by SIGTERM" and list((sweep / job / "checkpoints").glob("step_*.pt"))
    assert json.loads((sweep / "2" / "summary.json").read_text())["status"].startswith("skipped")
    time.sleep(1)
    assert len(workers) >= 2 and not [pid for pid in workers if alive(pid)]  # no process left behind

    logged = {job: read_metrics(sweep / job) for job in ("0", "1")}
    again = run_cli("train", "-m", f"resume={sweep}", cwd=tmp_path)  # the sweep's own command, from its folder
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("resuming from its checkpoint") == 2
    for job in ("0", "1", "2"):
        assert json.loads((sweep / job / "summary.json").read_text())["status"] == "finished"
        assert [r["step"] for r in read_metrics(sweep / job)] == [0, *range(200, 8001, 200)]  # each step once
    for job, before in logged.items():  # what a stopped job logged stays as it was
        assert read_metrics(sweep / job)[: len(before)] == before


def children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def holder_of(lock_file: Path) -> int | None:
    """The process that has ``lock_file`` open (a job's run holds its folder's lock)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == str(lock_file.resolve()) for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def test_a_job_submitit_requeues_after_its_time_out_resumes_in_its_folder(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "marlrun.cli", "train", "-m", *ISING, "total_steps=20000", "log_interval=1000",
                             "eval_interval=5000", "checkpoint_interval=5000", "seed=0", "hydra/launcher=submitit_local",
                             "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    job = sweep / "0"
    deadline = time.monotonic() + 120
    while not ((job / "metrics.jsonl").exists() and (read_metrics(job) or [{"step": 0}])[-1]["step"] > 0) and time.monotonic() < deadline:  # training
        time.sleep(0.2)
    task = holder_of(job / ".marlrun.lock")
    assert task is not None
    os.kill(task, signal.SIGUSR2)  # what submitit's controller (or SLURM) sends before the job's time is up
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, err
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "stopped by SIGUSR2" in logs and "Requeued job" in logs and "job 0: resuming from its checkpoint" in logs
    assert json.loads((job / "summary.json").read_text())["status"] == "finished"
    assert [r["step"] for r in read_metrics(job)] == [0, *range(1000, 20001, 1000)]  # each step once, over both attempts


def test_job_states_and_one_line_refusals(tmp_path, capsys):
    from marlrun.sweep import job_state

    def folder(name, summary=None, checkpoint=False):
        path = tmp_path / name
        (path / ".hydra").mkdir(parents=True)
        if summary:
            (path / "summary.json").write_text(json.dumps(summary))
        if checkpoint:
            (path / "checkpoints").mkdir()
            (path / "checkpoints" / "step_0000000300.pt").write_bytes(b"")
        return path

    assert job_state(folder("done", {"status": "finished", "env_steps": 600}))[:2] == ("finished", 600)
    assert job_state(folder("killed", None, checkpoint=True))[:2] == ("part-way", 300)
    assert job_state(folder("failed", {"status": "failed: algo.lr must be > 0"}))[0] == "failed"
    assert job_state(folder("diverged", {"status": "diverged: train/loss is nan", "env_steps": 500}, checkpoint=True))[0] == "failed"
    assert job_state(tmp_path / "never")[0] == "not started"
    running = folder("running")
    (running / "metrics.jsonl").write_text('{"step": 100}\n')
    fd = os.open(running / ".marlrun.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held as another process's run holds it
    try:
        assert job_state(running)[:2] == ("running", 100)
    finally:
        os.close(fd)

    capsys.readouterr()
    assert main(["train", "-m", "resume=" + str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "-m", f"resume={tmp_path / 'done'}"]) == 2
    assert "not a sweep folder (no multirun.yaml)" in capsys.readouterr().err
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["seed=0,1"], "hydra": []}}}))
    assert main(["train", "-m", f"resume={tmp_path}", "algo.lr=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "algo.lr=3 would change the sweep" in err
    assert main(["train", f"resume={tmp_path}"]) == 2
    assert "is a sweep's folder; continue the sweep with marlrun train -m resume=" in capsys.readouterr().err
