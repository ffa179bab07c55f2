"""SUPER-DDQN's pieces: batched networks, per-agent clipping, double-DQN targets, and sharing into buffers."""

import pytest
import torch
from torch.nn import functional as F

from marlrun.algos.super_ddqn import SuperDDQN, SuperDDQNConfig
from marlrun.envs.base import EnvSpec, VecStep
from marlrun.nn import DuelingQNetwork, SetConv2dReLU, clip_grad_norm_per_set

OBS = (7, 7, 3)


def spec(teams=("p", "p", "p")):
    return EnvSpec(name="test", agent_names=tuple(f"a{i}" for i in range(len(teams))), obs_shape=OBS, n_actions=5,
                   teams=tuple(teams), obs_storage_dtype=torch.uint8)


def make_algo(teams=("p", "p", "p"), num_envs=2, precision="fp32", **overrides):
    return SuperDDQN(SuperDDQNConfig(**{"buffer_size": 256, **overrides}), spec(teams), num_envs, torch.device("cpu"), seed=0, precision=precision)


def random_step(gen, E, A, alive=None):
    obs = torch.randint(0, 3, (E, A, *OBS), generator=gen).float()
    return VecStep(obs=obs, next_obs=obs.clone(), reward=torch.randn(E, A, generator=gen),
                   terminated=torch.rand(E, A, generator=gen) < 0.2, truncated=torch.zeros(E, A, dtype=torch.bool),
                   alive=torch.ones(E, A, dtype=torch.bool) if alive is None else alive, episode_end=torch.zeros(E, dtype=torch.bool))


def test_batched_network_equals_separate_networks():
    torch.manual_seed(0)
    net = DuelingQNetwork(3, OBS, 5, [8, 8], 2, 16, 32)
    x = torch.rand(3, 4, *OBS)
    q = net(x)
    for s in range(3):
        single = DuelingQNetwork(1, OBS, 5, [8, 8], 2, 16, 32)
        single.load_state_dict({k: v[s : s + 1] for k, v in net.state_dict().items()})
        torch.testing.assert_close(single(x[s : s + 1])[0], q[s])


@pytest.mark.parametrize("channels, kernel", [(4, 2), (9, 2), (9, 3)])  # few channels gather, more copy windows
def test_set_conv_matches_torch_conv2d_forward_and_backward(channels, kernel):
    conv = SetConv2dReLU(3, channels, 6, kernel, (7, 7))
    x = torch.rand(3, 5, 7, 7, channels, requires_grad=True)
    y = conv(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    for s in range(3):
        weight = conv.weight[s].detach().reshape(kernel, kernel, channels, 6).permute(3, 2, 0, 1).requires_grad_()  # (di, dj, c, out) -> (out, c, di, dj)
        bias = conv.bias[s, 0].detach().requires_grad_()
        xs = x[s].detach().requires_grad_()
        expected = F.relu(F.conv2d(xs.permute(0, 3, 1, 2), weight, bias)).permute(0, 2, 3, 1)
        expected.backward(grad[s])
        torch.testing.assert_close(y[s], expected)
        torch.testing.assert_close(x.grad[s], xs.grad)
        torch.testing.assert_close(conv.weight.grad[s], weight.grad.permute(2, 3, 1, 0).reshape(-1, 6))
        torch.testing.assert_close(conv.bias.grad[s, 0], bias.grad)


def test_each_agents_loss_moves_only_its_own_weights():
    net = DuelingQNetwork(3, OBS, 5, [8], 2, 16, 32)
    (net(torch.rand(3, 4, *OBS))[1] * torch.rand(4, 5)).sum().backward()  # a sum over actions would cancel the advantage
    for p in net.parameters():
        assert p.grad[1].abs().sum() > 0
        assert p.grad[0].abs().sum() == 0 and p.grad[2].abs().sum() == 0


def test_dueling_mean_advantage_is_removed():
    net = DuelingQNetwork(2, OBS, 5, [8], 2, 16, 32)
    x = torch.rand(2, 6, *OBS)
    value, advantage = net.streams(net.torso(net.convs(x).flatten(2)))
    assert advantage.mean(-1).abs().max() > 1e-3  # so the test below can fail
    torch.testing.assert_close(net(x).mean(-1), value.squeeze(-1))


def test_clip_grad_norm_per_set():
    a = torch.nn.Parameter(torch.zeros(2, 3))
    b = torch.nn.Parameter(torch.zeros(2, 4, 2))
    a.grad = torch.tensor([[3.0, 0, 0], [0.1, 0, 0]])
    b.grad = torch.zeros(2, 4, 2)
    b.grad[0, 0, 0] = 4.0  # set 0 norm 5, set 1 norm 0.1
    norms = clip_grad_norm_per_set([a, b], 1.0)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.1]))
    assert abs(torch.cat([a.grad[0], b.grad[0].flatten()]).norm().item() - 1.0) < 1e-4
    torch.testing.assert_close(a.grad[1], torch.tensor([0.1, 0, 0]))


def test_td_error_is_double_dqn():
    algo = make_algo()
    gen = torch.Generator().manual_seed(1)
    obs, next_obs = torch.rand(3, 5, *OBS, generator=gen), torch.rand(3, 5, *OBS, generator=gen)
    action = torch.randint(0, 5, (3, 5), generator=gen)
    reward, term = torch.randn(3, 5, generator=gen), (torch.rand(3, 5, generator=gen) < 0.5).float()
    with torch.no_grad():
        algo.q_target.advantage.bias.add_(torch.randn(3, 1, 5, generator=gen))  # make target differ from online
        td = algo.td_error(obs, action, reward, next_obs, term)
        online_next, target_next = algo.q(next_obs), algo.q_target(next_obs)
        for a in range(3):
            for i in range(5):
                best = online_next[a, i].argmax()
                y = reward[a, i] + 0.99 * (1 - term[a, i]) * target_next[a, i, best]
                assert abs(td[a, i] - (y - algo.q(obs)[a, i, action[a, i]])) < 1e-5


@pytest.mark.parametrize("parameter_sharing", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sharing_pass_merges_the_online_passes_with_the_same_td_errors(parameter_sharing, precision):
    """Without gradients the online network runs once over s and s' side by side: the same TD errors as the
    learning path's two passes, to float tolerance."""
    from marlrun.hardware import bf16_supported

    if precision == "bf16" and not bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no bf16 units")
    algo = make_algo(parameter_sharing=parameter_sharing, precision=precision)
    gen = torch.Generator().manual_seed(2)
    obs, next_obs = torch.randint(0, 3, (3, 16, *OBS), generator=gen).float(), torch.randint(0, 3, (3, 16, *OBS), generator=gen).float()
    action, reward = torch.randint(0, 5, (3, 16), generator=gen), torch.randn(3, 16, generator=gen)
    term = (torch.rand(3, 16, generator=gen) < 0.3).float()
    with torch.no_grad():
        algo.q_target.advantage.bias.add_(torch.randn(algo.q_target.advantage.bias.shape, generator=gen).to(algo.q_target.advantage.bias.dtype))
        merged = algo.td_error(obs, action, reward, next_obs, term)
    separate = algo.td_error(obs, action, reward, next_obs, term)  # grad enabled: separate online passes
    assert separate.requires_grad
    tolerance = dict(rtol=1e-5, atol=1e-5) if precision == "fp32" else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(merged, separate.detach(), **tolerance)


def fill_fragment(algo, E, A, gen, alive=None):
    steps = []
    for _ in range(algo.cfg.rollout_fragment):
        obs = torch.randint(0, 3, (E, A, *OBS), generator=gen).float()
        actions = torch.randint(0, 5, (E, A), generator=gen)
        step = random_step(gen, E, A, alive)
        algo.observe(obs, actions, step)
        steps.append((obs, actions, step))
    return steps


def buffer_rows(algo, agent):
    n = int(algo.replay.size[agent])
    r = algo.replay
    return [(r.obs[agent, i].float(), int(r.action[agent, i]), float(r.reward[agent, i]), r.next_obs[agent, i].float(), float(r.terminated[agent, i])) for i in range(n)]


def transitions_of(steps, agent):
    return [(o[e, agent], int(a[e, agent]), float(s.reward[e, agent]), s.next_obs[e, agent], float(s.terminated[e, agent]))
            for o, a, s in steps for e in range(o.shape[0])]


def same(rows, expected):
    key = lambda t: (t[1], round(t[2], 5), t[4], t[0].sum().item(), t[3].sum().item(), t[0].flatten().tolist())
    return sorted(map(key, rows)) == sorted(map(key, expected))


def test_share_all_puts_every_transition_intact_into_every_buffer():
    algo = make_algo(sharing="all")
    steps = fill_fragment(algo, 2, 3, torch.Generator().manual_seed(0))
    every = [t for a in range(3) for t in transitions_of(steps, a)]
    for a in range(3):
        assert algo.replay.size[a] == len(every)  # 8 own + 16 received
        assert same(buffer_rows(algo, a), every)
    assert algo.pending_updates == 2  # one update per fragment per environment copy


def test_no_sharing_keeps_own_transitions_only():
    algo = make_algo(sharing="none")
    steps = fill_fragment(algo, 2, 3, torch.Generator().manual_seed(0))
    for a in range(3):
        assert same(buffer_rows(algo, a), transitions_of(steps, a))


def test_sharing_stays_within_teams_and_the_chosen_team():
    teams = ("x", "x", "y", "y")
    algo = make_algo(teams, sharing="all")
    steps = fill_fragment(algo, 1, 4, torch.Generator().manual_seed(0))
    assert same(buffer_rows(algo, 0), transitions_of(steps, 0) + transitions_of(steps, 1))
    assert same(buffer_rows(algo, 3), transitions_of(steps, 2) + transitions_of(steps, 3))
    algo = make_algo(teams, sharing="all", share_team="y")
    steps = fill_fragment(algo, 1, 4, torch.Generator().manual_seed(0))
    assert same(buffer_rows(algo, 0), transitions_of(steps, 0))
    assert same(buffer_rows(algo, 2), transitions_of(steps, 2) + transitions_of(steps, 3))


def test_dead_agents_neither_store_nor_share():
    algo = make_algo(sharing="all")
    alive = torch.tensor([[True, False, True]])
    steps = fill_fragment(algo, 1, 3, torch.Generator().manual_seed(0), alive)
    assert algo.replay.size.tolist() == [8, 8, 8]  # 4 own each for 0 and 2, 4 from each other; 1 gets 8 received
    assert same(buffer_rows(algo, 1), transitions_of(steps, 0) + transitions_of(steps, 2))


def test_received_transitions_enter_with_the_senders_mean_priority():
    algo = make_algo(sharing="quantile", bandwidth=0.5, window=8)
    gen = torch.Generator().manual_seed(3)
    fill_fragment(algo, 2, 3, gen)
    leaves = algo.replay.priorities
    own = leaves[:, :8]  # own transitions first, at max priority (1.0 in a fresh buffer)
    torch.testing.assert_close(own, torch.ones_like(own))
    received = leaves[0, 8 : int(algo.replay.size[0])]
    assert len(received) > 0 and (received != 1.0).all()


def test_unknown_share_team_is_a_user_error():
    from marlrun.errors import UserError
    with pytest.raises(UserError, match="share_team"):
        make_algo(share_team="nobody")


def test_parameter_sharing_uses_one_weight_set():
    algo = make_algo(parameter_sharing=True, sharing="none")
    assert algo.q.torso[0].weight.shape[0] == 1
    obs = torch.rand(2, 3, *OBS).expand(2, 3, *OBS).clone()
    obs[:, 1] = obs[:, 0]
    q = algo._q_values(algo.q, obs.transpose(0, 1))
    torch.testing.assert_close(q[0], q[1])


def test_gradient_steps_follow_the_fragments():
    algo = make_algo(sharing="quantile", learning_starts=0, batch_size=4)
    gen = torch.Generator().manual_seed(0)
    for fragment in range(3):
        fill_fragment(algo, 2, 3, gen)  # 4 env steps in each of 2 copies: 2 gradient steps due
        for step in range(algo.cfg.rollout_fragment):  # the runner calls update once per vectorised env step
            metrics = algo.update(env_steps=100)
            assert set(metrics) == ({"train/loss", "train/td_error"} if step < 2 else set())
        assert algo.gradient_steps == 2 * (fragment + 1)
