"""The pursuit adapter against PettingZoo's own pursuit_v5, stepped side by side."""

import numpy as np
import pytest
import torch
from pettingzoo.sisl import pursuit_v5

from marlrun.envs.pursuit import make_pursuit
from marlrun.envs.vector import copy_seed

KW = dict(x_size=8, y_size=8, n_pursuers=3, n_evaders=4, obs_range=7, n_catch=2, freeze_evaders=False, surround=True,
          shared_reward=False, tag_reward=0.01, catch_reward=5.0, urgency_reward=-0.1, constraint_window=1.0, max_cycles=30)


@pytest.mark.parametrize("workers", [0, 2])
def test_adapter_matches_raw_library(workers):
    E, A, seed, steps = 3, KW["n_pursuers"], 7, 70  # crosses two automatic resets at max_cycles=30
    env = make_pursuit(E, workers, seed, **KW)
    raw = [pursuit_v5.parallel_env(**KW) for _ in range(E)]
    raw_obs = [r.reset(seed=copy_seed(seed, i))[0] for i, r in enumerate(raw)]
    names = raw[0].possible_agents
    try:
        obs = env.reset()
        assert obs.shape == (E, A, 7, 7, 3) and obs.dtype == torch.float32
        rng = np.random.default_rng(0)
        for t in range(steps):
            for e in range(E):
                np.testing.assert_array_equal(obs[e].numpy(), np.stack([raw_obs[e][n] for n in names]))
            actions = rng.integers(0, 5, size=(E, A))
            step = env.step(torch.as_tensor(actions))
            for e, r in enumerate(raw):
                o, rew, term, trunc, _ = r.step({n: int(actions[e, i]) for i, n in enumerate(names)})
                np.testing.assert_array_equal(step.next_obs[e].numpy(), np.stack([o[n] for n in names]))
                np.testing.assert_allclose(step.reward[e].numpy(), [rew[n] for n in names], rtol=1e-6)
                assert step.terminated[e].tolist() == [term[n] for n in names]
                assert step.truncated[e].tolist() == [trunc[n] for n in names]
                done = all(term.values()) or all(trunc.values())
                assert bool(step.episode_end[e]) == done
                if done:
                    o, _ = r.reset()  # the adapter resets on its own, continuing the copy's RNG
                raw_obs[e] = o
            assert step.alive.all()
            obs = step.obs
    finally:
        env.close()


def test_copies_are_seeded_independently():
    env = make_pursuit(4, 0, 0, **KW)
    try:
        obs = env.reset()
        firsts = {obs[e].numpy().tobytes() for e in range(4)}
        assert len(firsts) == 4
        again = env.reset()  # reset re-seeds every copy with its own seed
        assert torch.equal(obs, again)
    finally:
        env.close()


def test_spec():
    env = make_pursuit(1, 0, 0, **KW)
    try:
        assert env.spec.n_agents == 3 and env.spec.n_actions == 5 and env.spec.obs_shape == (7, 7, 3)
        assert env.spec.agent_names == ("pursuer_0", "pursuer_1", "pursuer_2")
    finally:
        env.close()
