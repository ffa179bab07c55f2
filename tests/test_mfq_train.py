"""MF-Q end to end: it orders a small Ising lattice, runs battles with every kind of opponent, and resumes."""

import pytest

from marlrun.checkpoint import checkpoint_paths, load_checkpoint
from marlrun.metrics import read_metrics
from marlrun.runner import train

ISING = ["experiment=mfq_ising", "env.L=8", "env.max_cycles=100", "hardware=cpu", "hardware.num_envs=4", "hardware.env_workers=0", "hardware.torch_threads=1",
         "progress=false", "print_config=false"]
BATTLE = ["algo=mfq", "env=battle", "env.map_size=16", "env.max_cycles=30", "hardware=cpu", "hardware.num_envs=2", "hardware.env_workers=0",
          "hardware.torch_threads=1", "algo.conv_channels=[4]", "algo.obs_hidden=16", "algo.hidden=[16]", "algo.mean_action_hidden=8",
          "algo.learning_starts=20", "algo.batch_size=16", "algo.buffer_size=2000", "total_steps=120", "log_interval=60",
          "eval_episodes=2", "eval_interval=0", "checkpoint_interval=60", "progress=false", "print_config=false"]


def test_mfq_orders_a_cold_lattice_and_not_a_hot_one(compose_cfg, tmp_path):
    """A short run on an 8x8 torus: at a low temperature the learned Boltzmann policy aligns the spins (xi > 0.9,
    energy near the ground state -2); at a high temperature the lattice stays disordered. Untrained, neither orders."""
    cold = train(compose_cfg([*ISING, "algo.temperature=0.3", "total_steps=2000", "eval_episodes=8"]), tmp_path / "cold")
    hot = train(compose_cfg([*ISING, "algo.temperature=5.0", "total_steps=2000", "eval_episodes=8"]), tmp_path / "hot")
    untrained = train(compose_cfg([*ISING, "algo.temperature=0.3", "total_steps=4", "algo.learning_starts=100", "eval_episodes=8"]), tmp_path / "untrained")
    xi = {name: run["evaluations"][-1]["eval/game/xi"] for name, run in (("cold", cold), ("hot", hot), ("untrained", untrained))}
    assert xi["cold"] > 0.9, xi
    assert cold["evaluations"][-1]["eval/game/energy_per_spin"] < -1.6
    assert xi["hot"] < 0.5 and xi["untrained"] < 0.5, xi
    records = read_metrics(tmp_path / "cold")
    assert {"env/xi", "env/energy_per_spin", "train/spin/loss", "train/temperature"} <= set(records[-1])
    assert not any(key.startswith("eval/episode_return/") for key in cold["evaluations"][-1])  # 64 agents: no per-agent returns


@pytest.mark.parametrize("opponent", ["random", "iql", "mfq"])
def test_battle_runs_against_every_opponent_and_reports_the_game(compose_cfg, tmp_path, opponent):
    summary = train(compose_cfg([*BATTLE, f"algo.opponent={opponent}"]), tmp_path)
    final = summary["evaluations"][-1]
    for key in ("eval/game/red_win", "eval/game/blue_win", "eval/game/draw", "eval/game/red_kills", "eval/game/blue_kills",
                "eval/team_return/red", "eval/team_return/blue"):
        assert key in final
    assert final["eval/game/red_win"] + final["eval/game/blue_win"] + final["eval/game/draw"] == pytest.approx(1.0)
    assert "eval/episode_return/red_0" in final  # 12 agents: per-agent returns are logged (up to 32)
    state = load_checkpoint(checkpoint_paths(tmp_path)[-1])
    teams = state["algo"]["teams"]
    assert teams["red"]["controller"] == "mfq" and teams["blue"]["controller"] == opponent
    assert ("replay" in teams["blue"]) == (opponent != "random")
    assert teams["red"]["replay"]["size"] > 0
    records = read_metrics(tmp_path)
    assert "train/red/loss" in records[-1] and (("train/blue/loss" in records[-1]) == (opponent != "random"))


def test_battle_against_a_frozen_run_and_resume(compose_cfg, tmp_path):
    train(compose_cfg([*BATTLE, "algo.opponent=random"]), tmp_path / "teacher")
    frozen = [*BATTLE, f"algo.opponent=frozen:{tmp_path / 'teacher'}@red"]
    full = train(compose_cfg([*frozen, "total_steps=240"]), tmp_path / "full")
    teacher = load_checkpoint(checkpoint_paths(tmp_path / "teacher")[-1])["algo"]["teams"]["red"]["net"]
    blue = load_checkpoint(checkpoint_paths(tmp_path / "full")[-1])["algo"]["teams"]["blue"]
    assert blue["controller"].startswith("frozen:") and "replay" not in blue
    for key, value in teacher.items():  # the frozen side plays the teacher's red network, unchanged
        assert (blue["net"][key] == value).all()

    train(compose_cfg([*frozen, "total_steps=120"]), tmp_path / "split")
    train(compose_cfg([*frozen, "total_steps=240", f"resume={tmp_path / 'split'}"]), tmp_path / "split")
    strip = lambda records: [{k: v for k, v in r.items() if not k.startswith(("perf/", "eval/"))} for r in records]  # noqa: E731
    resumed, straight = strip(read_metrics(tmp_path / "split")), strip(read_metrics(tmp_path / "full"))
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == [60, 120, 180, 240]
    # the same seed gives the same run up to the split (the split run alone evaluated there)
    assert resumed[:2] == straight[:2]
    state = load_checkpoint(checkpoint_paths(tmp_path / "split")[-1])
    assert state["env_steps"] == 240 and state["resumes"] == 1
    assert state["algo"]["teams"]["red"]["replay"]["size"] > load_checkpoint(checkpoint_paths(tmp_path / "full")[-1])["algo"]["teams"]["red"]["replay"]["size"] // 2
