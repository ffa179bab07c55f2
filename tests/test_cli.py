"""Mistakes get one clear line on stderr, a non-zero exit and no traceback; nothing written is lost."""

import dataclasses
import json
import os

import pytest
import torch

from conftest import SMALL_PURSUIT, run_cli, run_dirs

TINY = [*SMALL_PURSUIT, "total_steps=200", "log_interval=100", "eval_episodes=0", "algo.buffer_size=500", "algo.learning_starts=100"]


def assert_one_line_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("marlrun: error:")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args, needles", [
    (["algo=nonexistent"], ["algo/nonexistent", "super_ddqn"]),
    (["env=nowhere"], ["env/nowhere", "pursuit"]),
    (["algo.bandwidth=1.5"], ["algo.bandwidth", "(0, 1]"]),
    (["algo.bandwidth=0"], ["algo.bandwidth"]),
    (["algo.window=0"], ["algo.window", ">= 1"]),
    (["total_steps=-10"], ["total_steps", ">= 1"]),
    (["algo.bandwith=0.2"], ["unknown config key 'algo.bandwith'"]),
    (["+algo.bandwith=0.2"], ["unknown config key 'algo.bandwith'"]),
    (["algo.window=wide"], ["window"]),
    (["algo.sharing=some"], ["algo.sharing", "quantile"]),
    (["hardware=cuda"], ["hardware.device=cuda", "hardware=cpu"]),
])
def test_bad_input_is_one_clear_line(tmp_path, args, needles):
    result = run_cli("train", *TINY, *args, cwd=tmp_path)
    assert_one_line_error(result, *needles)
    assert not list(tmp_path.rglob("*.yaml"))  # no empty run folder is left behind


ADVERSARY = ["env=simple_adversary", "hardware=cpu", "hardware.env_workers=0", "total_steps=200", "eval_episodes=0", "progress=false"]


@pytest.mark.parametrize("args, needles", [
    (["algo=super_ddqn"], ["algo=super_ddqn needs agents with identical observation and action spaces", "env=simple_adversary", "algo=maddpg"]),
    (["algo=super_ddqn", "env.continuous_actions=true"], ["needs discrete actions", "algo=maddpg"]),
    (["algo=maddpg", "algo.critic=central"], ["algo.critic", "maddpg, ddpg"]),
    (["algo=maddpg", "algo.ddpg_teams=[adversaries]"], ["algo.ddpg_teams", "no team 'adversaries'", "adversary, good"]),
    (["algo=maddpg", "env.N=0"], ["env.N", ">= 1"]),
    (["algo=maddpg", "algo.tau=0"], ["algo.tau", "(0, 1]"]),
])
def test_impossible_combinations_say_what_to_use(tmp_path, args, needles):
    result = run_cli("train", *ADVERSARY, *args, cwd=tmp_path)
    assert_one_line_error(result, *needles)
    assert not list(tmp_path.rglob("*.yaml"))


MEAN_FIELD = ["algo=mfq", "hardware=cpu", "total_steps=100", "eval_episodes=0", "progress=false"]


@pytest.mark.parametrize("args, needles", [
    (["env=ising", "env.L=2"], ["env.L", ">= 3"]),
    (["env=ising", "env.neighbours=6"], ["env.neighbours", "4 or 8"]),
    (["env=ising", "algo.temperature=0"], ["algo.temperature", "> 0"]),
    (["env=ising", "algo.temperature=-1.5"], ["algo.temperature", "> 0"]),
    (["env=battle", "env.map_size=10"], ["env.map_size", "at least 12"]),
    (["env=battle", "algo.opponent=greedy"], ["algo.opponent", "unknown controller 'greedy'", "random"]),
    (["env=battle", "algo.controller=random"], ["algo.controller", "mfq, iql"]),
    (["env=battle", "env.map_size=12", "algo.opponent=frozen:/nonexistent/run"], ["algo.opponent=frozen:/nonexistent/run", "does not exist"]),
    (["env=pursuit"], ["algo=mfq needs a neighbourhood structure", "env=ising"]),
])
def test_mean_field_bad_input_is_one_clear_line(tmp_path, args, needles):
    result = run_cli("train", *MEAN_FIELD, *args, cwd=tmp_path)
    assert_one_line_error(result, *needles)
    assert not list(tmp_path.rglob("*.yaml"))


def test_unknown_command(tmp_path):
    assert_one_line_error(run_cli("trian", cwd=tmp_path), "unknown command 'trian'")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_cli("train", *TINY, f"hydra.run.dir={locked}/run", cwd=tmp_path)
    assert_one_line_error(result, "cannot write", "hydra.run.dir")


def test_output_folder_that_is_a_file(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    result = run_cli("train", *TINY, f"hydra.run.dir={blocker}/run", cwd=tmp_path)
    assert_one_line_error(result, "cannot write", "hydra.run.dir")
    assert blocker.read_text() == "keep me"


def test_resume_errors_and_corrupt_checkpoint_keeps_files(tmp_path):
    assert_one_line_error(run_cli("train", f"resume={tmp_path / 'missing'}", cwd=tmp_path), "does not exist")

    run = tmp_path / "run"
    done = run_cli("train", *TINY, f"hydra.run.dir={run}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    checkpoints = sorted((run / "checkpoints").glob("*.pt"))
    assert checkpoints
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    mismatch = run_cli("train", f"resume={run}", "algo.buffer_size=300", "total_steps=400", cwd=tmp_path)
    assert_one_line_error(mismatch, "algo.buffer_size was 500 in this run, not 300", "start a new run")

    checkpoints[-1].write_bytes(b"not a checkpoint")
    before[checkpoints[-1]] = b"not a checkpoint"
    result = run_cli("train", f"resume={run}", "total_steps=400", cwd=tmp_path)
    assert_one_line_error(result, "corrupt", checkpoints[-1].name)
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing already written was lost or changed

    for p in checkpoints:
        p.unlink()
    assert_one_line_error(run_cli("train", f"resume={run}", cwd=tmp_path), "no checkpoint")


def test_hydra_features_still_work(tmp_path):
    job = run_cli("train", "--cfg", "job", "algo.sharing=gaussian", cwd=tmp_path)
    assert job.returncode == 0 and "sharing: gaussian" in job.stdout
    helped = run_cli("train", "--help", cwd=tmp_path)
    from marlrun.registry import ALGORITHMS, ENVIRONMENTS

    assert helped.returncode == 0 and f"algo: {', '.join(sorted(ALGORITHMS))}" in helped.stdout and "hardware: auto, cpu, cuda" in helped.stdout
    assert f"env: {', '.join(sorted({*ENVIRONMENTS, 'pursuit_small'}))}" in helped.stdout and "schema/" not in helped.stdout  # and a preset
    top = run_cli("--help", cwd=tmp_path)
    assert top.returncode == 0 and "train" in top.stdout


@pytest.mark.parametrize("algo", ["ippo", "qmix"])
def test_help_documents_every_key_of_the_chosen_algorithm(tmp_path, algo):
    from marlrun.config import schema_keys
    from marlrun.registry import ALGORITHMS

    helped = run_cli("train", f"algo={algo}", "env=pursuit", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    keys = helped.stdout.split("== Keys ==")[1].split("== Config ==")[0]
    for k in schema_keys(ALGORITHMS[algo].config):  # each key with its meaning, as the schema's comment says it
        nested = schema_keys(type(k.default)) if dataclasses.is_dataclass(k.default) else None  # a group of keys (algo.seps)
        for key, doc in ([(f"{k.key}.{n.key}", n.doc) for n in nested] if nested else [(k.key, k.doc)]):
            assert f"algo.{key} (" in keys and doc in keys
    assert "anneal_steps (int, default ${total_steps})" in keys or algo != "ippo"


def test_multirun_makes_a_folder_per_job(tmp_path):
    result = run_cli("train", "-m", *TINY, "algo.sharing=none,all", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    dirs = run_dirs(tmp_path / "sweep")
    assert [d.name for d in dirs] == ["0", "1"]
    for d, sharing in zip(dirs, ["none", "all"]):
        assert f"sharing: {sharing}" in (d / ".hydra" / "config.yaml").read_text()
        assert (d / "summary.json").exists() and list(d.glob("events.out.tfevents.*"))


def test_bench_measures_side_by_side_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--case", "pursuit-native-1024-raw", "--case", "pursuit-pettingzoo-raw", "--seconds", "0.5",
                     "--json", str(out), "hardware.num_envs=8", "env.n_evaders=5", "hardware.env_workers=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    cases = {r["case"]: r for r in report["results"]}
    assert set(cases) == {"pursuit-native-1024-raw", "pursuit-pettingzoo-raw"}
    for r in cases.values():
        assert r["raw_env_steps_per_sec"] > 0 and r["peak_rss_mib"] > 0 and r["num_envs"] == 8
    # the worker processes each env really started: the native backend none, whatever hardware.env_workers says
    assert cases["pursuit-native-1024-raw"]["env_workers"] == 0 and cases["pursuit-pettingzoo-raw"]["env_workers"] == 1
    assert "pursuit-native-1024-raw" in result.stdout and "torch" in report["machine"]
    assert set(report["machine"]["cpu_bf16_units"]) <= {"amx_bf16", "avx512_bf16"} and "bf16 units:" in result.stdout
    assert_one_line_error(run_cli("bench", "--case", "nope", cwd=tmp_path), "unknown bench case nope", "mfq-ising-256")


def test_bench_learner_case_times_the_paper_update_against_the_matmul_peak(tmp_path):
    from marlrun.hardware import bf16_supported

    out = tmp_path / "bench.json"
    result = run_cli("bench", "--case", "super_ddqn-update", "--json", str(out), "hardware.device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (case,) = json.loads(out.read_text())["results"]
    expected = {"fp32", "bf16"} if bf16_supported(torch.device("cpu")) else {"fp32"}
    assert set(case["precisions"]) == expected and case["agents"] == 8 and case["batch_per_agent"] == 32
    for figures in case["precisions"].values():
        # three forward passes over 8 x 32 observations and one backward pass of the paper's network: ~1.5 GFLOP
        assert 1.0 < figures["gflop_per_update"] < 2.5
        # (no upper bound on the fraction: the update and the peak are timed at different moments, and on a machine
        # that other processes load the ratio of two such timings can be anything; bench's table is the place to read it)
        assert figures["ms_per_update"] > 0 and figures["fraction_of_peak"] > 0
        assert 0 < figures["ms_per_update_batch_1"]  # the fixed cost of the same update, one sample per agent
        assert figures["gflop_per_sec"] == pytest.approx(figures["gflop_per_update"] / figures["ms_per_update"] * 1e3, rel=0.02)
    assert "matmul peak" in result.stdout
