"""scripts/: the paper comparisons, sweep then report, end to end (shrunk by overrides)."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted(p for p in (Path(__file__).parent.parent / "scripts").glob("*.sh")  # sweep, then report
                 if not p.name.startswith("gpu_") and p.name not in ("refactor_check.sh", "threads_busy.sh"))  # (those: before/after runs of a change, timings)
GPU_SCRIPTS = sorted((Path(__file__).parent.parent / "scripts").glob("gpu_*.sh"))  # the CUDA check and its wheels
CONF = Path(__file__).parent.parent / "conf" / "experiment"


def run_script(script: Path, *args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # this venv's marlrun
    return subprocess.run(["bash", str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_is_valid_bash_and_names_existing_presets(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    presets = re.findall(r"experiment=(\w+)", text)
    assert presets and all((CONF / f"{p}.yaml").exists() for p in presets), presets
    assert "marlrun report" in text and "set -euo pipefail" in text


def test_the_gpu_check_names_existing_presets_bench_cases_and_algorithms():
    from marlrun.bench import CASES, LEARNER_CASES

    assert [p.name for p in GPU_SCRIPTS] == ["gpu_check.sh", "gpu_wheels.sh"]
    for script in GPU_SCRIPTS:
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = GPU_SCRIPTS[0].read_text()
    assert all((CONF / f"{p}.yaml").exists() for p in re.findall(r"experiment=(\w+)", text))
    cases = re.search(r"BENCH_CASES:-([^}]*)\}", text).group(1).replace("\\", " ").split()
    assert cases and set(cases) <= {*CASES, *LEARNER_CASES}, cases
    algos = set(re.findall(r"algo=(\w+)", text))
    assert algos == {p.stem for p in (CONF.parent / "algo").glob("*.yaml")} - {"ippo", "mcmc", "mfq"}, algos  # mfq by its presets


def test_the_small_heuristic_sweep_script_runs_and_reports(tmp_path):
    out = tmp_path / "sweep"
    tiny = ["algo.sharing=none,quantile", "seed=0,1", "total_steps=200", "log_interval=100", "eval_interval=100", "eval_episodes=2",
            "algo.learning_starts=100", "algo.buffer_size=500", "env.max_cycles=50"]
    result = run_script(SCRIPTS[[s.name for s in SCRIPTS].index("super_heuristics_small.sh")], str(out), *tiny, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 of 4 jobs finished" in result.stderr
    with open(out / "report" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    returns = [r for r in rows if r["metric"] == "eval/episode_return"]
    assert [r["group"] for r in returns] == ["algo.sharing=none", "algo.sharing=quantile"] and all(r["runs"] == "2" for r in returns)
    shared = {r["group"]: float(r["final_mean"]) for r in rows if r["metric"] == "sharing/fraction"}
    assert shared["algo.sharing=none"] == 0.0 and shared["algo.sharing=quantile"] > 0.0  # quantile sharing shares
    assert (out / "report" / "curves_sharing_fraction.png").exists()


def test_sweep_status_lists_every_planned_run_and_sums_the_finished_ones(tmp_path):
    import json

    for group, seed, status, wall in [("none", 0, "finished", 3600.0), ("quantile", 0, "finished", 5400.0), ("none", 1, "stopped", 100.0)]:
        folder = tmp_path / group / f"seed_{seed}"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"status": status, "final_eval_return": 10.0 + seed, "wall_time_s": wall,
                                                         "precision": "fp32", "torch_threads": 2}))
    script = Path(__file__).parent.parent / "scripts" / "sweep_status.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path), "none quantile", "0 1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert (summary["runs_planned"], summary["runs_finished"], summary["wall_time_h"]) == (4, 2, 2.5)  # (3600 + 5400) s
    assert [(r["group"], r["seed"], r["status"]) for r in summary["runs"]] == [
        ("none", 0, "finished"), ("quantile", 0, "finished"), ("none", 1, "stopped"), ("quantile", 1, "not run yet")]
    assert "2 of 4 runs finished, 2.5 h" in result.stdout
    missing = subprocess.run([sys.executable, str(script), str(tmp_path / "absent"), "none", "0"], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "not a folder of runs" in missing.stderr


PURSUIT_SWEEP = Path(__file__).parent.parent / "scripts" / "super_pursuit.sh"
SMALL = ["algo.buffer_size=1000", "algo.learning_starts=100", "eval_episodes=2", "eval_interval=1000", "log_interval=500", "env.max_cycles=50"]


def pursuit_sweep(tmp_path, *overrides, **variables):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "RESULTS": str(tmp_path / "results"),
           "SWEEP_GROUPS": "none", "SWEEP_SEEDS": "0", "LANES": "1", "THREADS": "1", **variables}
    return subprocess.run(["bash", str(PURSUIT_SWEEP), str(tmp_path / "out"), *SMALL, *overrides], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=env)


def test_the_pursuit_sweep_copies_a_finished_run_reports_it_and_skips_it_the_next_time(tmp_path):
    import json

    result = pursuit_sweep(tmp_path, "total_steps=400")
    assert result.returncode == 0, result.stderr[-2000:]
    kept = tmp_path / "results" / "none" / "seed_0"
    assert {p.name for p in kept.iterdir()} == {"metrics.jsonl", "summary.json", ".hydra"}  # no checkpoint
    assert json.loads((kept / "summary.json").read_text())["env_steps"] == 400
    assert (tmp_path / "results" / "report" / "report.csv").exists()
    summary = json.loads((tmp_path / "results" / "sweep_summary.json").read_text())
    assert (summary["runs_planned"], summary["runs_finished"]) == (39, 1)  # 13 groups x 3 seeds
    log = tmp_path / "out" / "logs" / "none_seed_0.log"
    log.write_text("")
    assert pursuit_sweep(tmp_path, "total_steps=400").returncode == 0
    assert log.read_text() == ""  # finished: not run again


def test_the_pursuit_sweep_stops_its_runs_at_SWEEP_STOP_AT_with_a_checkpoint_and_resumes_them(tmp_path):
    import json

    endless = "total_steps=100000000"
    first = pursuit_sweep(tmp_path, endless, SWEEP_STOP_AT="now + 40 seconds")
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "out" / "none" / "seed_0"
    stopped = json.loads((run / "summary.json").read_text())
    assert stopped["status"] == "stopped by SIGTERM" and 0 < stopped["env_steps"] < 100_000_000
    assert [p.name for p in (run / "checkpoints").glob("step_*.pt")] == [f"step_{stopped['env_steps']:010d}.pt"]
    assert not (tmp_path / "results" / "none").exists()  # not finished: not copied, not reported
    assert json.loads((tmp_path / "results" / "sweep_summary.json").read_text())["runs_finished"] == 0
    second = pursuit_sweep(tmp_path, endless, SWEEP_STOP_AT="now + 40 seconds")
    assert second.returncode == 0, second.stderr[-2000:]
    log = " ".join((tmp_path / "out" / "logs" / "none_seed_0.log").read_text().split())  # (the console wraps long lines)
    assert "resuming" in log and f"from env step {stopped['env_steps']:,}" in log
    assert json.loads((run / "summary.json").read_text())["env_steps"] > stopped["env_steps"]


@pytest.mark.parametrize("stop_at, says", [("garbage", "is not a time date -d reads"), ("yesterday", "in the past")])
def test_the_pursuit_sweep_refuses_a_stop_time_it_cannot_use_in_one_line(tmp_path, stop_at, says):
    result = pursuit_sweep(tmp_path, SWEEP_STOP_AT=stop_at)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and says in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


STAND_IN = """#!/usr/bin/env bash
# stands in for marlrun in the queue's tests: notes each call, trains for SECONDS_A_RUN and leaves a finished run
echo "$(date +%s.%N) start $*" >> "$CALLS"
if [[ $1 == train ]]; then
  for arg in "$@"; do case $arg in hydra.run.dir=*|resume=*) dir=${arg#*=} ;; esac; done
  sleep "$SECONDS_A_RUN"
  mkdir -p "$dir/.hydra" && : > "$dir/metrics.jsonl" && echo '{"status": "finished"}' > "$dir/summary.json"
fi
echo "$(date +%s.%N) end $*" >> "$CALLS"
"""


def sweep_with_a_stand_in(tmp_path, **variables):
    """The pursuit sweep with a stand-in for marlrun; returns its train calls as (start, end, run folder), in order."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    (bin_dir / "marlrun").write_text(STAND_IN)
    (bin_dir / "marlrun").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "CALLS": str(calls),
           "SECONDS_A_RUN": "2"}
    result = pursuit_sweep(tmp_path, **{**env, **variables})
    assert result.returncode == 0, result.stderr[-2000:]
    starts, ends = {}, {}
    for line in calls.read_text().splitlines():
        time, what, command, *args = line.split()
        if command == "train":
            folder = next(a.split("=", 1)[1] for a in args if a.startswith(("hydra.run.dir=", "resume=")))
            (starts if what == "start" else ends)[Path(folder).relative_to(tmp_path / "out").as_posix()] = float(time)
    return sorted((starts[f], ends[f], f) for f in starts)


def test_the_pursuit_sweeps_lanes_share_one_queue_so_none_idles_while_runs_are_left(tmp_path):
    # with one lane per run in turn, lane 0's runs (none and quantile) are finished already and lane 1 would run all then gaussian
    for group in ("none", "quantile"):
        (tmp_path / "results" / group / "seed_0").mkdir(parents=True)
        (tmp_path / "results" / group / "seed_0" / "summary.json").write_text('{"status": "finished"}')
    runs = sweep_with_a_stand_in(tmp_path, LANES="2", SWEEP_GROUPS="none all quantile gaussian", SWEEP_SEEDS="0")
    assert [folder for _, _, folder in runs] == ["all/seed_0", "gaussian/seed_0"]
    (first_start, first_end, _), (second_start, _, _) = runs
    assert second_start < first_end  # side by side, one on each lane
    assert all((tmp_path / "results" / group / "seed_0" / "summary.json").exists() for group in ("all", "gaussian"))


def test_the_pursuit_sweep_finishes_runs_part_way_before_it_starts_new_ones(tmp_path):
    checkpoints = tmp_path / "out" / "all" / "seed_1" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "step_0000000100.pt").write_bytes(b"")
    runs = sweep_with_a_stand_in(tmp_path, LANES="1", SWEEP_GROUPS="none all", SWEEP_SEEDS="0 1", SECONDS_A_RUN="0")
    assert [folder for _, _, folder in runs] == ["all/seed_1", "none/seed_0", "all/seed_0", "none/seed_1"]
