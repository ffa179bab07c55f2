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
    assert [r["group"] for r in returns] == ["independent DDQN", "SUPER quantile"] and all(r["runs"] == "2" for r in returns)
    shared = {r["group"]: float(r["final_mean"]) for r in rows if r["metric"] == "sharing/fraction"}
    assert shared["independent DDQN"] == 0.0 and shared["SUPER quantile"] > 0.0  # quantile sharing shares
    assert (out / "report" / "curves_sharing_fraction.png").exists()


SMALL = ["algo.buffer_size=1000", "algo.learning_starts=100", "eval_episodes=2", "eval_interval=200", "log_interval=100",
         "env.max_cycles=50", "hardware.torch_threads=1", "progress=false", "print_config=false"]


def test_keep_results_copies_the_finished_jobs_logs_without_checkpoints_and_lists_every_job(tmp_path):
    import json

    sweep, results = tmp_path / "sweep", tmp_path / "results"
    ran = subprocess.run([sys.executable, "-m", "marlrun.cli", "train", "-m", "experiment=super_sweep", "seed=0", "+super_pursuit=none,vdn",
                          "total_steps=400", *SMALL, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    keep = Path(__file__).parent.parent / "scripts" / "keep_results.py"
    kept = subprocess.run([sys.executable, str(keep), str(sweep), str(results)], capture_output=True, text=True)
    assert kept.returncode == 0, kept.stderr
    assert sorted(p.name for p in results.iterdir()) == ["0_super_pursuit=none", "1_super_pursuit=vdn", "sweep_summary.json"]
    assert {p.name for p in (results / "1_super_pursuit=vdn").iterdir()} == {"metrics.jsonl", "summary.json", ".hydra"}  # no checkpoint
    assert [j["state"] for j in json.loads((results / "sweep_summary.json").read_text())] == ["finished", "finished"]
    assert "2 of 2 jobs finished and kept" in kept.stdout
    report = subprocess.run([sys.executable, "-m", "marlrun.cli", "report", str(results)], cwd=tmp_path, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    with open(results / "report" / "report.csv") as f:
        groups = {row["group"] for row in csv.DictReader(f)}
    assert groups == {"independent DDQN", "VDN, standardised rewards"}  # named by the method
    refused = subprocess.run([sys.executable, str(keep), str(tmp_path), str(results)], capture_output=True, text=True)
    assert refused.returncode == 2 and "not a sweep folder" in refused.stderr
