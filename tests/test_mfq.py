"""MF-Q and the battle adapter: mean fields against brute-force loops, dead agents masked, the policy and targets."""

import numpy as np
import pytest
import torch
from magent2.environments import battle_v4

from marlrun.algos.mfq import MFQ, MFQConfig, boltzmann, greedy
from marlrun.envs.base import EnvSpec, IndexNeighbours, MaskNeighbours, VecStep
from marlrun.envs.battle import BattleConfig, BattleVecEnv, neighbour_mask
from marlrun.envs.vector import copy_seed

BATTLE = dict(map_size=16, max_cycles=50, view_radius=6, minimap_mode=False, extra_features=False, step_reward=-0.005,
              dead_penalty=-0.1, attack_penalty=-0.1, attack_opponent_reward=0.2)
SMALL_NET = dict(lr=1e-3, gamma=0.95, tau=0.01, batch_size=32, buffer_size=1000, learning_starts=0, update_interval=1,
                 max_grad_norm=10.0, huber_delta=1.0, conv_channels=[8], conv_kernel=3, obs_hidden=16, mean_action_hidden=8, hidden=[16])


def brute_force_mean(actions, neighbours_of, n_actions):
    """actions [E, A] (-1 = none); neighbours_of(e, i) -> iterable of j."""
    E, A = actions.shape
    out = np.zeros((E, A, n_actions))
    for e in range(E):
        for i in range(A):
            picked = [actions[e, j] for j in neighbours_of(e, i) if actions[e, j] >= 0]
            for a in picked:
                out[e, i, a] += 1.0 / len(picked)
    return out


def test_battle_mean_actions_match_a_neighbour_loop():
    rng = np.random.default_rng(0)
    E, A, K, radius = 3, 20, 21, 3
    positions = torch.as_tensor(rng.integers(0, 12, size=(E, A, 2)))
    alive = torch.as_tensor(rng.random((E, A)) < 0.8)
    teams = torch.as_tensor(np.repeat([0, 1], A // 2))
    actions = torch.as_tensor(rng.integers(-1, K, size=(E, A)))
    actions[~alive] = -1
    mask = neighbour_mask(positions, alive, teams, radius)

    def neighbours_of(e, i):
        if not alive[e, i]:
            return []
        return [j for j in range(A) if j != i and alive[e, j] and teams[j] == teams[i]
                and max(abs(int(positions[e, i, 0] - positions[e, j, 0])), abs(int(positions[e, i, 1] - positions[e, j, 1]))) <= radius]

    for e in range(E):
        for i in range(A):
            assert set(torch.nonzero(mask[e, i]).flatten().tolist()) == set(neighbours_of(e, i))
    got = MaskNeighbours(mask).mean(actions, K).numpy()
    np.testing.assert_allclose(got, brute_force_mean(actions.numpy(), neighbours_of, K), atol=1e-6)
    assert mask.any()  # the draw has neighbours at all


def test_index_neighbours_skip_missing_actions():
    index = torch.tensor([[1, 2], [0, 2], [0, 1]])
    actions = torch.tensor([[0, 1, -1]])
    mean = IndexNeighbours(index).mean(actions, 2)
    assert mean[0].tolist() == [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]


def test_battle_adapter_matches_the_library():
    """Same seeds and actions: observations, rewards, deaths and positions equal battle_v4's own."""
    E, seed = 2, 5
    env = BattleVecEnv(BattleConfig(**BATTLE), E, seed)
    kwargs = {k: v for k, v in BATTLE.items() if k != "view_radius"}
    raw = [battle_v4.parallel_env(**kwargs) for _ in range(E)]
    raw_obs = [r.reset(seed=copy_seed(seed, e))[0] for e, r in enumerate(raw)]
    names = env.spec.agent_names
    rng = np.random.default_rng(1)
    obs = env.reset()
    deaths = 0
    toward = torch.tensor([7 if n.startswith("red") else 5 for n in names])  # red steps right, blue left: the fronts meet
    for t in range(60):
        for e, r in enumerate(raw):
            for i, n in enumerate(names):
                expected = raw_obs[e][n] if n in r.agents else np.zeros(env.spec.obs_shape)
                np.testing.assert_array_equal(obs[e, i].numpy(), expected)
            game = r.unwrapped.env
            for handle in r.unwrapped.handles:  # positions the adapter reads for the mean fields
                ids = game.get_agent_id(handle)
                np.testing.assert_array_equal(env.positions[e, ids], game.get_pos(handle))
        # close in, then mostly attack, so that agents die within the test
        attacks = np.where(rng.random((E, env.n_agents)) < 0.9, rng.integers(13, 21, (E, env.n_agents)), rng.integers(0, 13, (E, env.n_agents)))
        actions = toward.expand(E, -1) if t < 5 else torch.as_tensor(attacks)
        step = env.step(actions)
        for e, r in enumerate(raw):
            living = list(r.agents)
            o, rew, term, trunc, _ = r.step({n: int(actions[e, names.index(n)]) for n in living})
            for n in living:
                i = names.index(n)
                np.testing.assert_array_equal(step.next_obs[e, i].numpy(), o[n])
                assert step.reward[e, i].item() == pytest.approx(rew[n], abs=1e-6)
                assert bool(step.alive[e, i])
                deaths += term[n]
            assert not step.alive[e, [names.index(n) for n in names if n not in living]].any()
            assert set(r.agents) == {n for i, n in enumerate(names) if env.alive[e, i]} or bool(step.episode_end[e])
            raw_obs[e] = o
            if step.episode_end[e]:
                raw_obs[e], _ = r.reset()
        obs = step.obs
    assert deaths > 0
    env.close()


def test_dead_agents_store_nothing_and_leave_the_mean_fields():
    spec = EnvSpec(name="toy", agent_names=("a", "b", "c", "d"), obs_shape=(3,), n_actions=2, teams=("x", "x", "y", "y"),
                   capabilities=frozenset({"neighbours"}))
    algo = MFQ(MFQConfig(controller="mfq", opponent="mfq", rounds=0, temperature=1.0, temperature_end=None,
               temperature_decay_steps=0, greedy_eval=True, **SMALL_NET), spec, 1, torch.device("cpu"), 0)
    alive = torch.tensor([[True, False, True, True]])
    mask = torch.ones(1, 4, 4, dtype=torch.bool) & ~torch.eye(4, dtype=torch.bool) & alive[:, :, None] & alive[:, None, :]
    context = {"neighbours": MaskNeighbours(mask), "prev_actions": torch.tensor([[1, 0, 0, 1]]).masked_fill(~alive, -1), "alive": alive}
    obs = torch.randn(1, 4, 3)
    for t in range(3):
        actions = algo.act(obs, t, context=context)
        assert algo.acted[-1][0, 0].tolist() == [0.5, 0.5]  # a's living neighbours c and d last did 0 and 1; dead b counts for nobody
        step = VecStep(obs=obs, next_obs=obs, reward=torch.ones(1, 4), terminated=torch.zeros(1, 4, dtype=torch.bool),
                       truncated=torch.zeros(1, 4, dtype=torch.bool), alive=alive, episode_end=torch.zeros(1, dtype=torch.bool))
        algo.observe(obs, actions, step)
    team_x, team_y = algo.teams
    assert team_x.replay.size == 2 and team_y.replay.size == 4  # 2 stored steps; b never stored
    assert not algo.acted  # every act's mean fields were consumed by its observe


def test_mean_field_of_the_first_step_uses_previous_actions_and_rounds_refine_it():
    spec = EnvSpec(name="toy", agent_names=tuple("abc"), obs_shape=(3,), n_actions=2, teams=("x",) * 3, capabilities=frozenset({"neighbours"}))
    index = torch.tensor([[1, 2], [0, 2], [0, 1]])
    context = {"neighbours": IndexNeighbours(index), "prev_actions": torch.tensor([[0, 0, 0]])}
    for rounds, expected in [(0, [1.0, 0.0]), (1, [0.0, 1.0])]:
        algo = MFQ(MFQConfig(controller="mfq", opponent="mfq", rounds=rounds, temperature=1e-3, temperature_end=None,
                   temperature_decay_steps=0, greedy_eval=True, **SMALL_NET), spec, 1, torch.device("cpu"), 0)
        head = algo.teams[0].net.head[-1]
        with torch.no_grad():  # a network that always prefers action 1
            head.weight.zero_()
            head.bias.copy_(torch.tensor([0.0, 5.0]))
        actions = algo.act(torch.zeros(1, 3, 3), 0, context=context)
        assert actions.tolist() == [[1, 1, 1]]
        assert algo.acted[-1][0].tolist() == [expected] * 3


@pytest.mark.parametrize("q", [[1.0, 0.0, -1.0, 0.5], [0.3, -0.4]])  # two actions take the logistic shortcut
def test_boltzmann_samples_the_softmax(q):
    g = torch.Generator().manual_seed(0)
    q = torch.tensor(q)
    K = len(q)
    for temperature in (0.5, 2.0):
        draws = boltzmann(q.expand(200_000, K), temperature, g)
        freq = torch.bincount(draws, minlength=K).float() / len(draws)
        torch.testing.assert_close(freq, torch.softmax(q / temperature, 0), atol=4e-3, rtol=0)
    assert greedy(q.expand(3, K)).tolist() == [int(q.argmax())] * 3


def test_double_dqn_target_and_iql_ignores_the_mean_action():
    spec = EnvSpec(name="toy", agent_names=("a", "b"), obs_shape=(3,), n_actions=4, teams=("x", "y"), capabilities=frozenset({"neighbours"}))
    algo = MFQ(MFQConfig(controller="mfq", opponent="iql", rounds=0, temperature=1.0, temperature_end=None,
               temperature_decay_steps=0, greedy_eval=True, **SMALL_NET), spec, 1, torch.device("cpu"), 0)
    mfq, iql = algo.teams
    B = 16
    batch = {"obs": torch.randn(B, 3), "mean_action": torch.softmax(torch.randn(B, 4), -1), "action": torch.randint(0, 4, (B,)),
             "reward": torch.randn(B), "next_obs": torch.randn(B, 3), "next_mean_action": torch.softmax(torch.randn(B, 4), -1),
             "terminated": (torch.rand(B) < 0.3).float()}
    with torch.no_grad():
        for p in mfq.target.parameters():
            p.add_(0.1 * torch.randn_like(p))  # the target differs from the online net
        y = algo.td_target(mfq, batch)
        for b in range(B):
            best = mfq.net(batch["next_obs"][b : b + 1], batch["next_mean_action"][b : b + 1]).argmax()
            value = mfq.target(batch["next_obs"][b : b + 1], batch["next_mean_action"][b : b + 1])[0, best]
            assert y[b].item() == pytest.approx((batch["reward"][b] + 0.95 * (1 - batch["terminated"][b]) * value).item(), abs=1e-5)
        assert not torch.allclose(mfq.net(batch["obs"], batch["mean_action"]), mfq.net(batch["obs"], 1 - batch["mean_action"]))
        torch.testing.assert_close(iql.net(batch["obs"], batch["mean_action"]), iql.net(batch["obs"], 1 - batch["mean_action"]))
    before = [p.clone() for p in mfq.net.parameters()]
    algo.learn(mfq, batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, mfq.net.parameters()))
