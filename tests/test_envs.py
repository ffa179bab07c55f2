"""Environment adapters against the raw libraries, stepped side by side."""

import numpy as np
import pytest
import torch
from pettingzoo.sisl import pursuit_v5

from marlrun.envs.pursuit import PursuitConfig, make_pursuit
from marlrun.envs.simple_adversary import SimpleAdversaryConfig, make_simple_adversary
from marlrun.envs.vector import copy_seed

KW = dict(x_size=8, y_size=8, n_pursuers=3, n_evaders=4, obs_range=7, n_catch=2, freeze_evaders=False, surround=True,
          shared_reward=False, tag_reward=0.01, catch_reward=5.0, urgency_reward=-0.1, constraint_window=1.0, max_cycles=30)
LIBRARY = PursuitConfig(backend="pettingzoo", **KW)  # the library's own pursuit, stepped by the adapter


@pytest.mark.parametrize("workers", [0, 2])
def test_adapter_matches_raw_library(workers):
    E, A, seed, steps = 3, KW["n_pursuers"], 7, 70  # crosses two automatic resets at max_cycles=30
    env = make_pursuit(LIBRARY, E, workers, seed)
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
    env = make_pursuit(LIBRARY, 4, 0, 0)
    try:
        obs = env.reset()
        firsts = {obs[e].numpy().tobytes() for e in range(4)}
        assert len(firsts) == 4
        again = env.reset()  # reset re-seeds every copy with its own seed
        assert torch.equal(obs, again)
    finally:
        env.close()


def test_spec():
    env = make_pursuit(LIBRARY, 1, 0, 0)
    try:
        assert env.spec.n_agents == 3 and env.spec.n_actions == 5 and env.spec.obs_shape == (7, 7, 3)
        assert env.spec.agent_names == ("pursuer_0", "pursuer_1", "pursuer_2")
    finally:
        env.close()


# ---------------------------------------------------------------------------- simple_adversary
ADV = dict(N=2, max_cycles=25, success_radius=0.16)


@pytest.mark.parametrize("continuous, workers", [(False, 0), (True, 1)])
def test_simple_adversary_adapter_matches_the_library(continuous, workers):
    """Same seeds and actions: the library's own parallel_env (with its checking wrappers) gives the same numbers."""
    from mpe2 import simple_adversary_v3
    E, seed, steps = 2, 3, 60  # crosses two automatic resets
    env = make_simple_adversary(SimpleAdversaryConfig(continuous_actions=continuous, **ADV), E, workers, seed)
    raw = [simple_adversary_v3.parallel_env(N=2, max_cycles=25, continuous_actions=continuous) for _ in range(E)]
    raw_obs = [r.reset(seed=copy_seed(seed, i))[0] for i, r in enumerate(raw)]
    names = raw[0].possible_agents
    sizes = env.spec.agent_obs_sizes
    assert names == list(env.spec.agent_names) and sizes == (8, 10, 10)

    def padded(o):
        return np.stack([np.pad(o[n], (0, 10 - len(o[n]))) for n in names])

    try:
        obs = env.reset()
        assert obs.shape == (E, 3, 10)
        rng = np.random.default_rng(0)
        for t in range(steps):
            for e in range(E):
                np.testing.assert_allclose(obs[e].numpy(), padded(raw_obs[e]), rtol=1e-6)
            actions = rng.random((E, 3, 5)).astype(np.float32) if continuous else rng.integers(0, 5, size=(E, 3))
            step = env.step(torch.as_tensor(actions))
            for e, r in enumerate(raw):
                o, rew, term, trunc, _ = r.step({n: actions[e, i] if continuous else int(actions[e, i]) for i, n in enumerate(names)})
                np.testing.assert_allclose(step.next_obs[e].numpy(), padded(o), rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(step.reward[e].numpy(), [rew[n] for n in names], rtol=1e-5)
                assert bool(step.episode_end[e]) == all(trunc.values())
                if all(trunc.values()):
                    o, _ = r.reset()
                raw_obs[e] = o
            obs = step.obs
    finally:
        env.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_the_squared_distance_reward_is_openais_adversary_reward(workers):
    """adversary_reward=squared_distance: the adversary gets minus its squared distance to the target, the good agents
    what mpe2 gives them, on the same trajectory as mpe2's own reward (minus the distance)."""
    E, seed = 2, 5
    envs = {kind: make_simple_adversary(SimpleAdversaryConfig(continuous_actions=False, adversary_reward=kind, **ADV), E, workers, seed)
            for kind in ("distance", "squared_distance")}
    try:
        for env in envs.values():
            env.reset()
        rng = np.random.default_rng(1)
        for t in range(30):
            actions = torch.as_tensor(rng.integers(0, 5, size=(E, 3)))
            plain, squared = (env.step(actions) for env in envs.values())
            np.testing.assert_array_equal(plain.next_obs.numpy(), squared.next_obs.numpy())
            good = plain.next_obs[:, 1]  # agent_0's row: goal - p first, then 2 landmarks, then adversary - p
            distance = torch.linalg.vector_norm(good[:, 0:2] - good[:, 6:8], dim=-1)
            torch.testing.assert_close(plain.reward[:, 0], -distance, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(squared.reward[:, 0], -distance**2, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(squared.reward[:, 1:], plain.reward[:, 1:])
    finally:
        for env in envs.values():
            env.close()


def test_an_unknown_adversary_reward_is_a_one_line_error():
    from marlrun.errors import UserError
    with pytest.raises(UserError, match="env.adversary_reward: unknown reward 'manhattan'; pick distance or squared_distance"):
        SimpleAdversaryConfig(adversary_reward="manhattan")


def test_simple_adversary_game_metrics_match_the_world_state():
    """Success and distances read from observations agree with the positions inside the library's world."""
    from mpe2 import simple_adversary_v3
    from marlrun.envs.simple_adversary import SimpleAdversaryVecEnv, simple_adversary_spec
    metrics = SimpleAdversaryVecEnv.episode_metrics
    holder = type("Holder", (), {"success_radius": 0.5})()  # a radius that both succeed and fail below
    raw = simple_adversary_v3.parallel_env(N=2, max_cycles=25)
    rng = np.random.default_rng(1)
    seen = set()
    for episode in range(30):
        o, _ = raw.reset(seed=episode)
        for _ in range(int(rng.integers(1, 25))):
            o, *_ = raw.step({n: int(rng.integers(0, 5)) for n in raw.agents})
        world = raw.unwrapped.world
        goal = world.agents[0].goal_a.state.p_pos
        good_d = min(np.linalg.norm(a.state.p_pos - goal) for a in world.agents[1:])
        adv_d = np.linalg.norm(world.agents[0].state.p_pos - goal)
        obs = torch.as_tensor(np.stack([np.pad(o[n], (0, 10 - len(o[n]))) for n in raw.possible_agents]))[None].float()
        m = metrics(holder, obs)
        assert m["game/good_final_distance"].item() == pytest.approx(good_d, abs=1e-5)
        assert m["game/adversary_final_distance"].item() == pytest.approx(adv_d, abs=1e-5)
        assert m["game/good_success"].item() == float(good_d < 0.5)
        assert m["game/adversary_success"].item() == float(adv_d < 0.5)
        seen.add((good_d < 0.5, adv_d < 0.5))
    assert len(seen) >= 3  # the episodes cover several outcomes
    assert simple_adversary_spec(SimpleAdversaryConfig(N=2)).teams == ("adversary", "good", "good")
