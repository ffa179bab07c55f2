"""`marlrun eval RUN_DIR`: the training-time evaluation, replayed from a checkpoint; animations of an episode."""

import json

import pytest
from PIL import Image

from conftest import SMALL_PURSUIT, run_cli
from test_cli import assert_one_line_error

PURSUIT = [*SMALL_PURSUIT, "total_steps=400", "log_interval=200", "eval_interval=200", "eval_episodes=3", "checkpoint_interval=200",
           "keep_checkpoints=2", "algo.buffer_size=500", "algo.learning_starts=100"]
RUNS = {
    "super_ddqn-pursuit": PURSUIT,
    "mfq-ising-boltzmann": ["experiment=mfq_ising", "env.L=8", "env.max_cycles=20", "hardware=cpu", "hardware.torch_threads=1", "total_steps=160",
                            "log_interval=80", "eval_episodes=3", "checkpoint_interval=160", "progress=false", "print_config=false"],
    "mfq-battle-random": ["algo=mfq", "env=battle", "env.map_size=16", "env.max_cycles=30", "hardware=cpu", "hardware.num_envs=2",
                          "hardware.env_workers=0", "hardware.torch_threads=1", "algo.conv_channels=[4]", "algo.obs_hidden=16",
                          "algo.hidden=[16]", "algo.learning_starts=20", "algo.batch_size=16", "algo.buffer_size=2000",
                          "algo.opponent=random", "total_steps=120", "log_interval=60", "eval_episodes=2", "eval_interval=0",
                          "checkpoint_interval=120", "progress=false", "print_config=false"],
    "qmix-pursuit": [*SMALL_PURSUIT, "algo=qmix", "algo.standardise_rewards=true", "total_steps=400", "log_interval=200", "eval_episodes=3",
                     "checkpoint_interval=400", "algo.buffer_size=500", "algo.learning_starts=100"],
    "mappo-pursuit": [*SMALL_PURSUIT, "algo=mappo", "algo.rollout_steps=50", "algo.greedy_eval=false", "total_steps=400", "log_interval=200",
                      "eval_episodes=3", "checkpoint_interval=400"],
    "mcmc-ising": ["experiment=mcmc_ising", "env.L=8", "env.max_cycles=20", "hardware=cpu", "hardware.torch_threads=1", "total_steps=40",
                   "log_interval=20", "eval_episodes=2", "checkpoint_interval=40", "progress=false", "print_config=false"],
    "mappo-pettingzoo-simple_spread": ["algo=mappo", "env=pettingzoo", "env.id=mpe2.simple_spread_v3", "env.kwargs={N: 3, max_cycles: 25}",
                                       "hardware=cpu", "hardware.num_envs=2", "hardware.env_workers=0", "algo.rollout_steps=50",
                                       "total_steps=300", "log_interval=100", "eval_episodes=3", "eval_interval=0", "checkpoint_interval=300",
                                       "progress=false", "print_config=false"],
    "maddpg-vmas-navigation": ["algo=maddpg", "env=vmas", "env.scenario=navigation", "env.kwargs={n_agents: 2}", "env.max_steps=30",
                               "hardware=cpu", "hardware.num_envs=4", "algo.learning_starts=100", "algo.batch_size=32", "algo.update_interval=10",
                               "total_steps=300", "log_interval=100", "eval_episodes=3", "eval_interval=0", "checkpoint_interval=300",
                               "progress=false", "print_config=false"],
    "maddpg-simple_adversary": ["algo=maddpg", "env=simple_adversary", "env.max_cycles=25", "hardware=cpu", "hardware.num_envs=2",
                                "hardware.env_workers=0", "algo.learning_starts=100", "algo.batch_size=32", "algo.update_interval=10",
                                "total_steps=300", "log_interval=100", "eval_episodes=3", "eval_interval=0", "checkpoint_interval=300",
                                "progress=false", "print_config=false"],
}


def train_run(tmp_path, name):
    run = tmp_path / name
    result = run_cli("train", *RUNS[name], f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return run, json.loads((run / "summary.json").read_text())


def eval_record(run, *args, cwd):
    result = run_cli("eval", str(run), *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    written = [line.split("wrote ", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("wrote ") and line.strip().endswith(".json")]
    return json.loads(open(written[0]).read()), result


@pytest.mark.parametrize("name", sorted(RUNS))
def test_eval_with_the_training_seed_reproduces_the_training_time_evaluation(tmp_path, name):
    run, summary = train_run(tmp_path, name)
    record, result = eval_record(run, cwd=tmp_path)
    trained = summary["evaluations"][-1]
    assert record["step"] == trained["step"] == summary["env_steps"]
    assert record["metrics"] == {k: v for k, v in trained.items() if k != "step"}  # exactly: same episodes, same policy
    assert "training-time evaluation" in result.stderr


def test_eval_of_an_earlier_checkpoint_reproduces_the_evaluation_logged_then(tmp_path):
    run, summary = train_run(tmp_path, "super_ddqn-pursuit")
    record, _ = eval_record(run, "checkpoint=200", cwd=tmp_path)
    assert record["step"] == 200
    at_200 = next(e for e in summary["evaluations"] if e["step"] == 200)
    assert record["metrics"] == {k: v for k, v in at_200.items() if k != "step"}
    assert record["checkpoint"].endswith("step_0000000200.pt")

    other, _ = eval_record(run, "seed=7", "episodes=5", cwd=tmp_path)
    assert other["seed"] == 7 and other["episodes"] == 5 and other["training"] is None


def test_render_writes_an_animation_of_the_first_episode_and_adds_it_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = train_run(tmp_path, "super_ddqn-pursuit")
    record, _ = eval_record(run, "render=true", "episodes=2", "fps=20", cwd=tmp_path)
    gif = run / "eval" / "step_400_seed_0.gif"
    assert str(gif) in record["files"]
    with Image.open(gif) as image:
        assert image.size[0] == 8 * 24 and image.size[1] > 8 * 24  # 8x8 grid, 24 pixels a cell; the caption and legend below
        assert 2 <= image.n_frames <= 50  # one frame per state of a 50-step episode (identical neighbours merge)
    events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    assert "eval/episode_seed_0" in events.Tags()["images"]
    assert events.Images("eval/episode_seed_0")[0].step == 400

    ising_run, _ = train_run(tmp_path, "mfq-ising-boltzmann")
    ising, _ = eval_record(ising_run, "render=true", "tensorboard=false", f"video={tmp_path / 'lattice.gif'}", cwd=tmp_path)
    with Image.open(tmp_path / "lattice.gif") as image:
        assert image.n_frames > 1
    assert "eval/episode_seed_0" not in EventAccumulator(str(ising_run)).Reload().Tags()["images"]


def test_eval_mistakes_are_one_line(tmp_path):
    run, _ = train_run(tmp_path, "super_ddqn-pursuit")
    assert_one_line_error(run_cli("eval", str(tmp_path / "nowhere"), cwd=tmp_path), "not a marlrun run folder")
    assert_one_line_error(run_cli("eval", str(run), "episode=3", cwd=tmp_path), "unknown eval option 'episode'", "episodes")
    assert_one_line_error(run_cli("eval", str(run), "checkpoint=123", cwd=tmp_path), "no checkpoint at env step 123", "200", "400")
    assert_one_line_error(run_cli("eval", str(run), "episodes=0", cwd=tmp_path), "episodes=0")
    assert_one_line_error(run_cli("eval", str(run), "render=yes", cwd=tmp_path), "render=yes", "true or false")
    assert_one_line_error(run_cli("eval", str(run), f"video={tmp_path / 'x.avi'}", cwd=tmp_path), ".gif or .mp4")
    assert_one_line_error(run_cli("eval", cwd=tmp_path), "one run folder")


def test_eval_plays_a_run_whose_generator_state_came_from_another_device(tmp_path):
    """A CUDA generator's state is 16 bytes, the CPU's 5056: evaluation reseeds the policy's generator, so a run
    trained on a GPU evaluates on the CPU (and the reverse) with the training-time evaluation's numbers."""
    import torch

    run, summary = train_run(tmp_path, "super_ddqn-pursuit")
    path = sorted((run / "checkpoints").glob("*.pt"))[-1]
    state = torch.load(path, weights_only=True)
    state["algo"]["generator"] = torch.zeros(16, dtype=torch.uint8)  # the shape of a CUDA generator's state
    torch.save(state, path)
    record, _ = eval_record(run, cwd=tmp_path)
    assert record["metrics"] == {k: v for k, v in summary["evaluations"][-1].items() if k != "step"}
