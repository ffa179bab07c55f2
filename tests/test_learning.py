"""SUPER-DDQN really learns: on a small pursuit its greedy policy beats a random one by a clear margin.

The small pursuit: 8x8, 2 pursuers, 5 evaders, an evader is caught when one pursuer reaches it (surround off,
n_catch 1), 100 steps per episode.
"""

import torch

from conftest import SMALL_PURSUIT
from marlrun.metrics import read_metrics
from marlrun.runner import env_seed, evaluate, make_env, train

EPISODES = 12
LEARN = [*SMALL_PURSUIT, "env.n_evaders=5", "env.surround=false", "env.n_catch=1", "env.max_cycles=100",
         "total_steps=8000", "log_interval=2000", "eval_interval=0", f"eval_episodes={EPISODES}",
         "checkpoint_interval=1000000", "save_replay=false", "hardware.torch_threads=1", "algo.buffer_size=20000",
         "algo.lr=5e-4", "algo.epsilon_start=1.0", "algo.epsilon_end=0.05", "algo.epsilon_decay_steps=5000",
         "algo.target_update_interval=500"]


class RandomPolicy:
    def __init__(self, n_actions, seed=0):
        self.n_actions, self.generator = n_actions, torch.Generator().manual_seed(seed)

    def act(self, obs, env_steps, greedy=False, context=None):
        return torch.randint(0, self.n_actions, obs.shape[:2], generator=self.generator)


def random_return(cfg) -> float:
    """A random policy's mean return on the evaluation episodes of ``cfg`` (their own seeds)."""
    env = make_env(cfg, cfg.eval_episodes, env_seed(cfg.seed, 1), torch.device("cpu"))
    try:
        return evaluate(RandomPolicy(env.spec.n_actions), env, 0)["eval/episode_return"]
    finally:
        env.close()


def test_greedy_policy_beats_random_on_small_pursuit(compose_cfg, tmp_path):
    cfg = compose_cfg(LEARN)
    summary = train(cfg, tmp_path)
    learned, baseline = summary["final_eval_return"], random_return(cfg)
    print(f"greedy {learned:.2f} vs random {baseline:.2f} over {EPISODES} episodes")
    assert learned > baseline + 3.0  # a catch is worth +5 to the pursuer that makes it
    returns = [r["train/episode_return"] for r in read_metrics(tmp_path) if "train/episode_return" in r]
    assert returns[-1] > returns[0]
