"""Nothing lost, nothing silent: divergence, run folders two processes want, a full disk, crashed logs, interpolated
configs, paths with spaces and a killed sweep worker."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_cli
from test_bad_input import TINY
from test_cli import assert_one_line_error

from marlrun.metrics import read_metrics


def finished_run(folder: Path, *extra: str) -> Path:
    done = run_cli("train", *TINY, f"hydra.run.dir='{folder}'", *extra, cwd=folder.parent)
    assert done.returncode == 0, done.stderr
    return folder


def test_divergence_stops_the_run_logs_the_nan_and_keeps_the_last_finite_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", *TINY, "total_steps=400", "algo.lr=1e12", f"hydra.run.dir={run}", cwd=tmp_path)
    assert_one_line_error(result, "training diverged", "at env step", "is kept")
    line = result.stderr.strip()
    assert "train/loss is nan" in line or "holds nan" in line or "holds inf" in line, line
    records = read_metrics(run)
    last = records[-1]
    assert any(isinstance(v, float) and v != v for v in last.values()), last  # the nan is in the log, not dropped
    kept = sorted((run / "checkpoints").glob("*.pt"))
    assert kept and kept[-1].name in line
    state = torch.load(kept[-1], weights_only=True)
    learned = {key: state["algo"][key] for key in ("q", "q_target", "optimizer")}  # the sharing window marks empty slots with nan
    floats = [t for t in _tensors(learned) if t.is_floating_point()]
    assert floats and all(bool(torch.isfinite(t).all()) for t in floats)
    assert json.loads((run / "summary.json").read_text())["status"].startswith("diverged")


def _tensors(node):
    if isinstance(node, torch.Tensor):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _tensors(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _tensors(value)


def test_a_run_folder_has_one_owner_and_a_dead_owner_does_not_hold_it(tmp_path):
    run = finished_run(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom marlrun.runfolder import lock\n"
                               f"assert lock(Path({str(run)!r}))\nprint('locked', flush=True)\ntime.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = (run / "metrics.jsonl").read_bytes()
        assert_one_line_error(run_cli("train", f"resume={run}", "total_steps=400", cwd=tmp_path), "in use by another marlrun process")
        assert (run / "metrics.jsonl").read_bytes() == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    resumed = run_cli("train", f"resume={run}", "total_steps=400", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in read_metrics(run)] == [100, 200, 300, 400]


def test_runs_started_together_get_their_own_default_folders(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "marlrun.cli", "train", *TINY], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    folders = sorted(p.parent for p in tmp_path.rglob("metrics.jsonl"))
    assert len(folders) == 2
    for folder in folders:
        assert [r["step"] for r in read_metrics(folder)] == [100, 200]  # no interleaved records
        assert len(list((folder / "checkpoints").glob("*.pt"))) == 1


def test_a_second_run_into_a_running_runs_folder_is_refused_and_the_first_finishes(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "marlrun.cli", "train", *TINY, "total_steps=4000", f"hydra.run.dir={run}"],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    second = run_cli("train", *TINY, f"hydra.run.dir={run}", cwd=tmp_path)
    assert_one_line_error(second, str(run))
    assert "already holds a run" in second.stderr or "in use" in second.stderr
    assert first.wait(timeout=600) == 0, first.stderr.read()
    assert [r["step"] for r in read_metrics(run)] == list(range(100, 4001, 100))
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs: too small for a checkpoint of the tiny run (needs root and mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tiny_disk, tmp_path):
    run = tiny_disk / "run"
    result = run_cli("train", *TINY, f"hydra.run.dir={run}", cwd=tmp_path)
    assert_one_line_error(result, "no space left on device", str(run))
    assert not [p for p in run.rglob("*.tmp")]
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())


def test_a_metrics_record_that_does_not_fit_is_cut_back_off(tiny_disk):
    from marlrun.errors import UserError
    from marlrun.metrics import MetricWriter

    writer = MetricWriter(tiny_disk)
    writer.write(100, {"train/loss": 1.0})
    filler = tiny_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk
        for chunk in (4096, 1):
            try:
                while f.write(b"x" * chunk):
                    pass
            except OSError:
                pass
    with pytest.raises(UserError, match="no space left on device"):
        for step in range(200, 100_000, 100):  # until a record does not fit
            writer.write(step, {f"train/key_{i}": float(i) for i in range(50)})
    text = (tiny_disk / "metrics.jsonl").read_text()
    assert text.endswith("\n") and [json.loads(line)["step"] for line in text.splitlines()][0] == 100
    filler.unlink()


def test_stale_temp_files_go_and_a_record_cut_short_by_a_crash_does_not_stop_a_resume(tmp_path):
    run = finished_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 300, "train/lo')  # what a crash or a full disk in mid-write leaves
    stale = run / "checkpoints" / ".step_0000000300.pt.tmp"
    stale.write_bytes(b"half a checkpoint")
    resumed = run_cli("train", f"resume={run}", "total_steps=400", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    said = [line for line in resumed.stderr.splitlines() if line.startswith("marlrun: warning:")]
    assert len(said) == 1 and "cut short" in said[0]  # the dropped record is named, in one line
    assert [r["step"] for r in read_metrics(run)] == [100, 200, 300, 400]
    assert (run / "metrics.jsonl").read_text().endswith("\n")
    assert not stale.exists()


def test_the_one_metrics_reader_leaves_out_only_a_last_record_cut_short(tmp_path):
    from marlrun.errors import UserError

    path = tmp_path / "metrics.jsonl"
    assert read_metrics(tmp_path) == []  # no file yet: no history
    whole = '{"step": 100, "train/loss": NaN}\n\n{"step": 200, "eval/episode_return": -Infinity}\n'
    path.write_text(whole + '{"step": 300, "train/lo')  # a process that died mid-write
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [100, 200] and records[1]["eval/episode_return"] == float("-inf")
    path.write_text(whole + '{"step": 300}')  # whole, only its newline missing: kept
    assert [r["step"] for r in read_metrics(tmp_path)] == [100, 200, 300]
    for bad, number, says in [('{"step": 100}\n{"step": 2\n{"step": 300}\n', 2, "not a JSON record"),
                              ('{"step": 100}\n{"step": 200, "x": 1}\n{"step\n', 3, "not a JSON record"),  # cut, then a newline
                              ('{"train/loss": 1.0}\n', 1, "no integer 'step'"),
                              ('{"step": 1.5}\n', 1, "no integer 'step'"),
                              ('[1, 2]\n{"step": 100}\n', 1, "no integer 'step'"),
                              ('{"step": 100}\n\xff\xfe\n', 2, "not a JSON record")]:
        path.write_bytes(bad.encode("latin-1"))
        with pytest.raises(UserError, match=re.escape(f"{path}: line {number} is ") + ".*" + re.escape(says)):
            read_metrics(tmp_path)


def test_a_run_folder_records_the_values_that_ran_so_resume_and_eval_need_no_environment(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "MARLRUN_TEST_SEED": "3"}
    done = subprocess.run([sys.executable, "-m", "marlrun.cli", "train", *TINY, "seed=${oc.env:MARLRUN_TEST_SEED}", f"hydra.run.dir={run}"],
                          cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert saved["seed"] == 3
    assert json.loads((run / "summary.json").read_text())["seed"] == 3
    assert run_cli("train", f"resume={run}", "total_steps=300", cwd=tmp_path).returncode == 0  # the variable is not set here
    evaluated = run_cli("eval", str(run), "episodes=1", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr


def test_paths_with_spaces_and_accents_train_resume_and_are_quoted_in_hints(tmp_path):
    run = tmp_path / "with space ü"
    finished_run(run)
    resumed = run_cli("train", f"resume={run}", "total_steps=300", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in read_metrics(run)] == [100, 200, 300]
    again = run_cli("train", *TINY, f"hydra.run.dir='{run}'", cwd=tmp_path)
    assert_one_line_error(again, "already holds a run", f"resume='{run}'")  # a hint that pastes into a shell
    unquoted = run_cli("train", *TINY, f"hydra.run.dir={run}_2", cwd=tmp_path)
    assert_one_line_error(unquoted, "quote it", f"hydra.run.dir='{run}_2'")


def _holder_of(lock_file: Path) -> int | None:
    """The pid of the process with ``lock_file`` open (the job's worker), from /proc."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == str(lock_file) for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def test_a_killed_joblib_worker_does_not_end_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "marlrun.cli", "train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                             *TINY, "total_steps=2000", "algo.sharing=none,all", "seed=0", f"hydra.sweep.dir={sweep}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock_file = sweep / "1" / ".marlrun.lock"
    deadline = time.time() + 300
    victim = None
    while victim is None and time.time() < deadline and proc.poll() is None:
        if (sweep / "1" / "metrics.jsonl").exists():
            victim = _holder_of(lock_file)
        time.sleep(0.2)
    assert victim is not None, "job 1 never started"
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=900)
    jobs = json.loads((sweep / "sweep_summary.json").read_text())
    assert [j["job"] for j in jobs] == ["0", "1"], out
    assert all(j["status"] == "finished" for j in jobs), out
    assert proc.returncode == 0, out
    assert "rerunning job 1" in out
    for job in range(2):
        assert [r["step"] for r in read_metrics(sweep / str(job))][-1] == 2000


def test_a_step_that_never_ends_says_so_and_a_second_sigterm_stops_it_at_once(tmp_path):
    """A step the config made huge (an MCMC step of a billion sweeps): the first SIGTERM says it will stop after the
    step; the second stops the run at once (exit 130), as a double Ctrl-C does."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "marlrun.cli", "train", "algo=mcmc", "env=ising", "env.L=16", "algo.sweeps=1000000000", "eval_episodes=0",
                             "hardware=cpu", "progress=false", "print_config=false", f"hydra.run.dir={run}"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    notice = proc.stderr.readline()  # the step's notice, after 15 s in it: the loop, and its signal handling, are on
    while notice and "the first step of training has taken" not in notice:
        notice = proc.stderr.readline()
    assert "Ctrl-C (or SIGTERM) stops the run after it, twice stops it at once" in notice
    proc.send_signal(signal.SIGTERM)
    time.sleep(2)
    assert proc.poll() is None  # still in its step
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=20)[1]
    assert proc.returncode == 130, err
    assert "SIGTERM: stopping after this step with a checkpoint; send it again to stop at once" in err
    assert "Traceback" not in err


def test_a_slow_step_says_so_once(monkeypatch, capsys):
    from marlrun import console as console_module
    from marlrun.console import taking_long

    monkeypatch.setattr(console_module, "SLOW_AFTER_S", 0.05)
    with taking_long("building 4 copies of env=battle"):
        time.sleep(0.3)
    with taking_long("a quick step"):
        pass
    time.sleep(0.1)
    err = capsys.readouterr().err
    assert err.count("marlrun:") == 1 and "building 4 copies of env=battle has taken 0 s so far; Ctrl-C stops it" in err
