"""End to end: run folders, TensorBoard and metrics.jsonl agree, determinism, interrupt and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import SMALL_PURSUIT, run_cli
from marlrun.checkpoint import checkpoint_paths, load_checkpoint
from marlrun.metrics import read_metrics
from marlrun.runner import train

SHORT = [*SMALL_PURSUIT, "total_steps=600", "log_interval=200", "eval_interval=400", "eval_episodes=2",
         "checkpoint_interval=400", "algo.buffer_size=1000", "algo.learning_starts=200"]


def start_training(args, cwd, run, records, **popen_kwargs):
    """Start `marlrun train` in a subprocess and return once ``run`` has ``records`` metric records."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "marlrun.cli", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kwargs)
    deadline = time.time() + 120
    while len(read_metrics(run)) < records and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    return proc


def scalars_without_timing(records):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def test_run_folder_holds_tensorboard_events_matching_metrics_jsonl(compose_cfg, tmp_path):
    summary = train(compose_cfg(SHORT), tmp_path)
    assert summary["status"] == "finished" and summary["env_steps"] == 600
    assert json.loads((tmp_path / "summary.json").read_text())["env_steps"] == 600
    assert len(checkpoint_paths(tmp_path)) == 1  # keep_checkpoints
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 200, 400, 600]  # an evaluation of the untrained policy at step 0

    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"train/episode_return", "train/episode_return/pursuer_0", "train/episode_return/pursuer_1", "train/episode_length",
                "train/loss", "train/td_error", "train/epsilon", "sharing/fraction", "sharing/fraction/pursuer_0",
                "sharing/fraction/pursuer_1", "perf/steps_per_sec", "perf/updates_per_sec", "eval/episode_return",
                "eval/episode_return/pursuer_0", "eval/episode_length"}
    assert expected <= tags, expected - tags
    for record in records:
        for key, value in record.items():
            if key == "step":
                continue
            logged = {e.step: e.value for e in events.Scalars(key)}
            assert logged[record["step"]] == pytest.approx(value, rel=1e-6), key
    assert [r["step"] for r in records if "eval/episode_return" in r] == [0, 400, 600]
    assert set(records[0]) == {"step"} | {k for k in records[-1] if k.startswith("eval/")}  # step 0: the evaluation alone
    assert summary["evaluations"][0]["step"] == 0


def test_same_seed_same_metrics_different_seed_different(compose_cfg, tmp_path):
    runs = {}
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        train(compose_cfg([*SHORT, f"seed={seed}"]), tmp_path / name)
        runs[name] = scalars_without_timing(read_metrics(tmp_path / name))
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_same_seed_same_metrics_with_worker_processes(compose_cfg, tmp_path):
    overrides = [*SHORT, "env.backend=pettingzoo", "hardware.env_workers=2", "eval_episodes=0"]
    train(compose_cfg(overrides), tmp_path / "a")
    train(compose_cfg(overrides), tmp_path / "b")
    assert scalars_without_timing(read_metrics(tmp_path / "a")) == scalars_without_timing(read_metrics(tmp_path / "b"))


def test_sigint_leaves_a_checkpoint_and_resume_finishes_without_gaps(tmp_path):
    run = tmp_path / "run"
    args = [*SMALL_PURSUIT, "total_steps=3000", "log_interval=100", "eval_episodes=0", "checkpoint_interval=100000",
            "algo.buffer_size=2000", "algo.learning_starts=100", f"hydra.run.dir={run}"]
    proc = start_training(args, tmp_path, run, records=4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "resume=" in err
    paths = checkpoint_paths(run)
    assert len(paths) == 1
    state = load_checkpoint(paths[-1])
    stopped_at = state["env_steps"]
    assert 400 <= stopped_at < 3000

    resumed = run_cli("train", f"resume={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == list(range(100, 3001, 100))  # nothing missing, nothing twice
    assert json.loads((run / "summary.json").read_text())["env_steps"] == 3000
    assert "overrides.yaml" in {p.name for p in (run / ".hydra").iterdir()}  # the original .hydra/ is kept

    extended = run_cli("train", f"resume={run}", "total_steps=3400", cwd=tmp_path)
    assert extended.returncode == 0, extended.stderr
    assert [r["step"] for r in read_metrics(run)][-4:] == [3100, 3200, 3300, 3400]


def test_checkpoint_holds_only_tensors_and_plain_data(compose_cfg, tmp_path):
    train(compose_cfg(SHORT), tmp_path)
    state = torch.load(checkpoint_paths(tmp_path)[-1], weights_only=True)
    assert state["env_steps"] == 600 and "q" in state["algo"] and "replay" in state["algo"]


def test_sigterm_to_the_whole_process_group_with_workers_stops_cleanly(tmp_path):
    """Schedulers signal every process of a job: env workers must ignore it and let the main process checkpoint."""
    run = tmp_path / "run"
    args = [*SMALL_PURSUIT, "env.backend=pettingzoo", "hardware.env_workers=1", "total_steps=100000", "log_interval=100", "eval_episodes=0",
            "algo.buffer_size=2000", "algo.learning_starts=100", f"hydra.run.dir={run}"]
    proc = start_training(args, tmp_path, run, records=2, start_new_session=True)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "stopped by SIGTERM" in err
    assert load_checkpoint(checkpoint_paths(run)[-1])["env_steps"] >= 200


MADDPG_SHORT = ["algo=maddpg", "env=simple_adversary", "hardware=cpu", "hardware.num_envs=4", "hardware.env_workers=0",
                "progress=false", "print_config=false", "total_steps=1200", "log_interval=400", "eval_interval=800",
                "eval_episodes=5", "checkpoint_interval=800", "algo.learning_starts=400", "algo.batch_size=64",
                "algo.buffer_size=5000", "algo.update_interval=50"]


def test_maddpg_run_logs_teams_and_game_scores_and_resumes_exactly(compose_cfg, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(compose_cfg(MADDPG_SHORT), full)
    records = read_metrics(full)
    assert [r["step"] for r in records] == [0, 400, 800, 1200]
    last = records[-1]
    for key in ("train/team_return/adversary", "train/team_return/good", "train/game/good_success", "train/critic_loss",
                "train/actor_loss", "eval/team_return/good", "eval/game/adversary_success", "eval/game/adversary_final_distance"):
        assert key in last, key
    # team returns are the means of their agents' returns
    assert last["eval/team_return/good"] == pytest.approx((last["eval/episode_return/agent_0"] + last["eval/episode_return/agent_1"]) / 2, rel=1e-5)
    assert 0.0 <= last["eval/game/good_success"] <= 1.0

    # stop at 800 (a checkpoint), resume to 1200: the learner continues exactly (the episodes restart)
    train(compose_cfg([*MADDPG_SHORT, "total_steps=800"]), part)
    checkpoint = load_checkpoint(checkpoint_paths(part)[-1])
    assert checkpoint["env_steps"] == 800 and checkpoint["algo"]["replay"]["size"] == 800
    summary = train(compose_cfg([*MADDPG_SHORT, f"resume={part}"]), part)
    assert summary["env_steps"] == 1200
    assert [r["step"] for r in read_metrics(part)] == [0, 400, 800, 1200]


def test_maddpg_trains_on_pursuit_with_one_batched_group(compose_cfg, tmp_path):
    cfg = compose_cfg([*SMALL_PURSUIT, "algo=maddpg", "total_steps=1000", "log_interval=500", "eval_episodes=1",
                       "algo.learning_starts=300", "algo.batch_size=32", "algo.buffer_size=2000", "algo.update_interval=50"])
    summary = train(cfg, tmp_path)
    assert summary["status"] == "finished"
    last = read_metrics(tmp_path)[-1]
    assert "train/critic_loss" in last and "eval/episode_return/pursuer_1" in last
    assert "train/team_return/pursuer" not in last  # one team: its return is the mean return


def test_the_run_says_what_ran_where_and_why(tmp_path):
    """The start banner, summary.json and TensorBoard's text tab name the device, the precision and the torch threads,
    with the reason for each (the setting, or what ``auto`` found)."""
    run = tmp_path / "run"
    result = run_cli("train", *SMALL_PURSUIT, "print_config=true", "hardware.torch_threads=1", "hardware.precision=fp32",
                     "total_steps=200", "log_interval=100", "eval_episodes=0", "algo.buffer_size=500", "algo.learning_starts=100",
                     f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    banner = " ".join(result.stderr.split())
    assert "super_ddqn on pursuit, seed 0, 200 env steps device: cpu (" in banner
    assert "precision: fp32 (hardware.precision=fp32)" in banner and "torch threads: 1 (hardware.torch_threads=1)" in banner
    said = json.loads((run / "summary.json").read_text())["hardware"]
    assert said["precision"] == "fp32" and said["torch_threads"] == "1" and said["device"].startswith("cpu (")
    events = EventAccumulator(str(run), size_guidance={"tensors": 0}).Reload()
    text = events.Tensors("run/hardware/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "hardware.precision=fp32" in text and "hardware.torch_threads=1" in text


def test_time_limit_stops_with_a_checkpoint_and_resume_continues(tmp_path):
    run = tmp_path / "run"
    args = [*SMALL_PURSUIT, "hardware.torch_threads=1", "log_interval=50", "eval_episodes=0", "algo.buffer_size=500", "algo.learning_starts=100"]
    stopped = run_cli("train", *args, "total_steps=10000000", "time_limit=2s", f"hydra.run.dir={run}", cwd=tmp_path)
    assert stopped.returncode == 130, stopped.stderr  # stopped, not finished: a resume continues it
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped by time_limit" and 0 < summary["env_steps"] < 10_000_000
    assert checkpoint_paths(run) and load_checkpoint(checkpoint_paths(run)[-1])["env_steps"] == summary["env_steps"]
    total = summary["env_steps"] + 100
    resumed = run_cli("train", f"resume={run}", f"total_steps={total}", "time_limit=null", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == sorted(set(steps)) and steps[-1] == total  # every logged step once


PURSUIT_ALGOS = {  # every algorithm that fits pursuit, with what makes a 400-step run update
    "super_ddqn": ["algo.buffer_size=1000", "algo.learning_starts=100"],
    "qmix": ["algo.buffer_size=1000", "algo.learning_starts=100"],
    "ippo": ["algo.rollout_steps=50"],
    "mappo": ["algo.rollout_steps=50"],
    "maddpg": ["algo.buffer_size=1000", "algo.learning_starts=100", "algo.batch_size=32", "algo.update_interval=50"],
}


def test_every_algorithm_that_fits_pursuit_is_listed():
    from marlrun.algos.base import unmet_needs
    from marlrun.registry import ALGORITHMS, entry

    spec = entry("env", "pursuit").spec(entry("env", "pursuit").config())
    assert set(PURSUIT_ALGOS) == {name for name, e in ALGORITHMS.items() if not unmet_needs(e.cls, spec)}


@pytest.mark.parametrize("algo", sorted(PURSUIT_ALGOS))
def test_the_small_pursuit_preset_composes_with_every_algorithm_that_fits_pursuit(compose_cfg, tmp_path, algo):
    cfg = compose_cfg(["env=pursuit_small", f"algo={algo}", *PURSUIT_ALGOS[algo], "hardware=cpu", "hardware.num_envs=2",
                       "hardware.env_workers=0", "total_steps=400", "log_interval=200", "eval_episodes=1", "progress=false",
                       "print_config=false"])
    assert (cfg.env.x_size, cfg.env.n_pursuers, cfg.env.n_evaders, cfg.env.max_cycles) == (10, 4, 4, 100)
    summary = train(cfg, tmp_path)
    assert summary["status"] == "finished" and summary["env"] == "pursuit"
    assert any(k.startswith("train/") and "loss" in k for r in read_metrics(tmp_path) for k in r)  # it learned, not only acted


def test_output_to_a_file_is_plain_lines_no_path_cut_and_no_empty_log(tmp_path):
    """Not a terminal: progress as a plain line per log, no line over 200 characters, the run folder printed whole,
    and no empty cli.log in the run folder."""
    run = tmp_path / ("a long folder name that goes on and on " * 2).strip() / "run"  # a line over 80 columns, under 200
    result = run_cli("train", *SMALL_PURSUIT, "total_steps=400", "log_interval=200", "eval_episodes=1", "algo.learning_starts=100",
                     "algo.buffer_size=1000", "progress=true", "print_config=true", f"hydra.run.dir='{run}'", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert all(len(line) <= 200 for line in lines), max(lines, key=len)
    assert f"run folder: {run}" in lines
    assert [line for line in lines if line.startswith("super_ddqn on pursuit: step ")][-1].startswith("super_ddqn on pursuit: step 400/400, ")
    assert not any("steps/s return" in line for line in lines)  # no progress bar drawn into a file
    assert not (run / "cli.log").exists()
