"""A resume continues the run its checkpoint holds: a key that would make it another experiment is refused in one line
and changes nothing on disk; a key that only changes how long it runs or what it logs is taken, and every logged step
appears exactly once."""

import pytest

from conftest import SMALL_PURSUIT, run_cli
from marlrun.metrics import read_metrics
from test_cli import assert_one_line_error

QUICK = ["progress=false", "print_config=false", "hardware.torch_threads=1", "eval_episodes=2"]
FAMILIES = {  # a short run of each family, and one key whose change would make it another experiment
    "super_ddqn": ([*SMALL_PURSUIT, "algo.buffer_size=500", "algo.learning_starts=100"], "algo.lr=0.01"),
    "qmix": ([*SMALL_PURSUIT, "algo=qmix", "algo.buffer_size=500", "algo.learning_starts=100"], "env.n_evaders=2"),
    "ppo": ([*SMALL_PURSUIT, "algo=ippo", "algo.rollout_steps=25"], "hardware.num_envs=3"),
    "maddpg": (["algo=maddpg", "env=simple_adversary", "hardware=cpu", "hardware.num_envs=2", "hardware.env_workers=0",
                "algo.learning_starts=100", "algo.batch_size=32", "algo.update_interval=20"], "algo.gamma=0.5"),
    "mfq": (["algo=mfq", "env=battle", "env.map_size=16", "env.max_cycles=30", "hardware=cpu", "hardware.num_envs=2",
             "hardware.env_workers=0", "algo.conv_channels=[4]", "algo.obs_hidden=16", "algo.hidden=[16]",
             "algo.learning_starts=20", "algo.batch_size=16", "algo.buffer_size=2000"], "env.map_size=20"),
}


def files(run):
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_resume_refuses_another_experiment_and_takes_a_longer_one(tmp_path, family):
    overrides, unsafe = FAMILIES[family]
    run = tmp_path / "run"
    first = run_cli("train", *overrides, *QUICK, "total_steps=200", "log_interval=100", "checkpoint_interval=200",
                    f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = files(run)

    key = unsafe.split("=")[0]
    assert_one_line_error(run_cli("train", f"resume={run}", unsafe, "total_steps=400", cwd=tmp_path), f"resume: {key} was", "start a new run")
    assert_one_line_error(run_cli("train", f"resume={run}", "total_steps=100", cwd=tmp_path), "total_steps=100 is below the 200")
    assert files(run) == before  # refused before anything was written

    longer = run_cli("train", f"resume={run}", "total_steps=400", "log_interval=50", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == sorted(set(steps)) and steps[:3] == [0, 100, 200] and steps[-1] == 400  # each step once, in order
    assert [s for s in steps if s > 200] == [250, 300, 350, 400]  # the new log interval from the resume on
