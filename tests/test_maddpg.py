"""MADDPG: Gumbel-softmax samples, per-agent actor and critic updates, target computation, replay, game metrics."""

import pytest
import torch

from marlrun.algos.maddpg import MADDPG, MADDPGConfig, gumbel_softmax
from marlrun.envs.simple_adversary import SimpleAdversaryConfig, make_simple_adversary, simple_adversary_spec
from marlrun.errors import UserError
from marlrun.nn import SetMLP

SETTINGS = dict(critic="maddpg", ddpg_teams=[], actor_lr=1e-2, critic_lr=1e-2, gamma=0.95, tau=0.01, batch_size=64,
                buffer_size=1000, learning_starts=0, update_interval=100, max_grad_norm=0.5, hidden=[16, 16],
                actor_reg=1e-3, gumbel_temperature=1.0, gumbel_hard=False, noise_std=0.1)


def make_algo(continuous=False, **overrides):
    torch.manual_seed(0)
    spec = simple_adversary_spec(SimpleAdversaryConfig(N=2, continuous_actions=continuous))
    return MADDPG(MADDPGConfig(**{**SETTINGS, **overrides}), spec, num_envs=4, device=torch.device("cpu"), seed=0)


def random_batch(algo, B=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    A, K, D = algo.n_agents, algo.n_actions, algo.spec.obs_shape[0]
    obs, next_obs = torch.randn(B, A, D, generator=g), torch.randn(B, A, D, generator=g)
    for a in range(A):  # padding stays zero, as the env adapter gives it
        obs[:, a, algo.spec.obs_size(a):] = 0
        next_obs[:, a, algo.spec.obs_size(a):] = 0
    if algo.discrete:
        action = torch.nn.functional.one_hot(torch.randint(0, K, (B, A), generator=g), K).float()
    else:
        action = torch.rand(B, A, K, generator=g)
    return {"obs": obs, "action": action, "reward": torch.randn(B, A, generator=g), "next_obs": next_obs,
            "terminated": (torch.rand(B, A, generator=g) < 0.2).float()}


def set_weights(mlp: SetMLP, s: int):
    """Agent s's layers of a batched MLP as (weight [in, out], bias [out]) pairs."""
    return [(layer.weight[s], layer.bias[s, 0]) for layer in mlp if hasattr(layer, "weight")]


def mlp_forward(layers, x):
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            x = torch.relu(x)
    return x


# ---------------------------------------------------------------------------- Gumbel-softmax
@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_samples_are_valid_and_differentiable(hard):
    logits = torch.randn(3, 200, 5, requires_grad=True)
    y = gumbel_softmax(logits, temperature=0.7, hard=hard, generator=torch.Generator().manual_seed(0))
    assert y.shape == logits.shape
    torch.testing.assert_close(y.sum(-1), torch.ones(3, 200))
    assert (y >= 0).all() and (y <= 1).all()
    if hard:
        assert ((y == 0) | (y == 1)).all()  # exactly one-hot in the forward pass
    else:
        assert ((y > 0) & (y < 1)).float().mean() > 0.9  # soft: interior points of the simplex
    (y * torch.randn(5)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_gumbel_softmax_samples_follow_the_softmax():
    logits = torch.tensor([2.0, 0.5, 0.0, -1.0, 1.0])
    y = gumbel_softmax(logits.expand(100_000, 5), 1.0, hard=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(y.mean(0), torch.softmax(logits, 0), atol=0.01, rtol=0)


def test_exploration_samples_from_the_actor_softmax_and_greedy_takes_the_argmax():
    algo = make_algo()
    obs = random_batch(algo, B=1)["obs"].expand(20_000, -1, -1)
    greedy = algo.act(obs, 0, greedy=True)
    sampled = algo.act(obs, 0)
    with torch.no_grad():
        for group, actor in zip(algo.groups, algo.actors):
            probs = torch.softmax(actor(algo.own_obs(group, obs[:1])), -1)[:, 0]  # [n, K]
            for j, agent in enumerate(group.agents.tolist()):
                assert (greedy[:, agent] == probs[j].argmax()).all()
                freq = torch.bincount(sampled[:, agent], minlength=5).float() / len(obs)
                torch.testing.assert_close(freq, probs[j], atol=0.015, rtol=0)


def test_continuous_actions_stay_in_bounds():
    algo = make_algo(continuous=True, noise_std=1.0)
    actions = algo.act(random_batch(algo, B=500)["obs"] * 10, 0)
    assert actions.shape == (500, 3, 5) and actions.dtype == torch.float32
    assert actions.min() >= 0.0 and actions.max() <= 1.0


# ---------------------------------------------------------------------------- updates
def test_groups_batch_agents_with_the_same_shapes():
    algo = make_algo()
    assert [g.agents.tolist() for g in algo.groups] == [[0], [1, 2]]  # adversary (8 numbers), good agents (10)
    assert [g.obs_size for g in algo.groups] == [8, 10]
    mixed = make_algo(ddpg_teams=["adversary"])
    assert [g.central for g in mixed.groups] == [False, True]
    assert mixed.critics[0][0].weight.shape[1] == 8 + 5  # a DDPG critic sees its own observation and action
    assert mixed.critics[1][0].weight.shape[1] == 8 + 10 + 10 + 3 * 5  # MADDPG: everyone's


@pytest.mark.parametrize("ddpg_teams", [[], ["adversary"]])
def test_actor_loss_of_one_agent_moves_only_that_agents_actor(ddpg_teams):
    algo = make_algo(ddpg_teams=ddpg_teams)
    batch = random_batch(algo)
    for agent in range(algo.n_agents):
        algo.actors.zero_grad(set_to_none=True)
        algo.critics.zero_grad(set_to_none=True)
        algo.critics.requires_grad_(False)
        algo.actor_losses(batch)[agent].backward()
        algo.critics.requires_grad_(True)
        for group, actor in zip(algo.groups, algo.actors):
            for p in actor.parameters():
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                for j, a in enumerate(group.agents.tolist()):
                    assert (grad[j].abs().sum() > 0) == (a == agent), f"agent {agent}'s loss touched agent {a}'s actor"
        assert all(p.grad is None for p in algo.critics.parameters())


def test_update_round_steps_each_network_once_and_polyak_averages_the_targets():
    algo = make_algo()
    batch = random_batch(algo)
    before = {k: v.clone() for k, v in algo.nets.state_dict().items()}
    algo.update_round(batch)
    after = algo.nets.state_dict()
    for name in before:
        if name.startswith(("actors.", "critics.")):
            assert not torch.equal(before[name], after[name]), f"{name} did not move"
    for online, target in (("actors.", "actor_targets."), ("critics.", "critic_targets.")):
        for name in before:
            if name.startswith(online):
                t = target + name[len(online):]
                torch.testing.assert_close(after[t], before[t] + 0.01 * (after[name] - before[t]))
    assert algo.gradient_steps == 1


def test_critic_loss_gradient_reaches_only_its_own_critic():
    algo = make_algo()
    batch = random_batch(algo)
    y = algo.td_targets(batch)
    for agent in range(algo.n_agents):
        algo.critics.zero_grad(set_to_none=True)
        algo.critic_losses(batch, y)[0][agent].backward()
        for group, critic in zip(algo.groups, algo.critics):
            for p in critic.parameters():
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                for j, a in enumerate(group.agents.tolist()):
                    assert (grad[j].abs().sum() > 0) == (a == agent)
        assert all(p.grad is None for p in algo.actors.parameters())


def joint_input(algo, obs, actions):
    parts = [obs[:, a, : algo.spec.obs_size(a)] for a in range(algo.n_agents)]
    return torch.cat(parts + [actions.flatten(1)], dim=-1)


@pytest.mark.parametrize("ddpg_teams", [[], ["good"]])
def test_td_targets_match_a_per_agent_reference_with_target_actors_and_critics(ddpg_teams):
    """Continuous actions make the target policy deterministic: y is checked against an agent-by-agent loop."""
    algo = make_algo(continuous=True, ddpg_teams=ddpg_teams)
    for p in algo.nets.parameters():  # targets that differ from the online networks
        p.data += 0.1 * torch.randn_like(p)
    batch = random_batch(algo)
    y = algo.td_targets(batch)

    slot = {a: (k, j) for k, g in enumerate(algo.groups) for j, a in enumerate(g.agents.tolist())}
    next_obs = batch["next_obs"]
    next_actions = torch.stack([
        torch.sigmoid(mlp_forward(set_weights(algo.actor_targets[slot[a][0]], slot[a][1]), next_obs[:, a, : algo.spec.obs_size(a)]))
        for a in range(algo.n_agents)], dim=1)
    for a in range(algo.n_agents):
        k, j = slot[a]
        if algo.groups[k].central:
            inputs = joint_input(algo, next_obs, next_actions)
        else:
            inputs = torch.cat([next_obs[:, a, : algo.spec.obs_size(a)], next_actions[:, a]], -1)
        q_next = mlp_forward(set_weights(algo.critic_targets[k], j), inputs).squeeze(-1)
        expected = batch["reward"][:, a] + 0.95 * (1 - batch["terminated"][:, a]) * q_next
        torch.testing.assert_close(y[:, a], expected, atol=1e-5, rtol=1e-5)


def test_td_targets_use_the_target_actors_not_the_online_ones():
    algo = make_algo()
    batch = random_batch(algo)

    def targets():
        algo.generator.manual_seed(7)  # the same Gumbel noise each time
        return algo.td_targets(batch)

    base = targets()
    with torch.no_grad():
        for p in algo.actors.parameters():
            p.add_(torch.randn_like(p))
    torch.testing.assert_close(targets(), base)  # online actors play no part
    with torch.no_grad():
        for p in algo.actor_targets.parameters():
            p.add_(torch.randn_like(p))
    assert not torch.allclose(targets(), base)


def test_unknown_ddpg_team_is_a_clear_error():
    from marlrun.errors import UserError
    with pytest.raises(UserError, match="algo.ddpg_teams: env=simple_adversary has no team 'badguys'; its teams are adversary, good"):
        make_algo(ddpg_teams=["badguys"])


def test_state_dict_round_trip_restores_networks_optimizers_and_replay():
    algo = make_algo()
    batch = random_batch(algo, B=100)
    algo.replay.add(**{k: batch[k] for k in algo.replay.fields})
    algo.update_round(algo.replay.sample(64))
    state = algo.state_dict()
    other = make_algo()
    other.load_state_dict(state)
    for (name, a), (_, b) in zip(algo.nets.state_dict().items(), other.nets.state_dict().items()):
        assert torch.equal(a, b), name
    assert other.replay.size == 100 and torch.equal(other.replay.obs[:100], algo.replay.obs[:100])
    torch.testing.assert_close(algo.update_round(algo.replay.sample(64))["train/critic_loss"],
                               other.update_round(other.replay.sample(64))["train/critic_loss"])


def test_update_rounds_follow_the_update_interval_after_learning_starts():
    algo = make_algo(learning_starts=200, update_interval=100, batch_size=8)
    batch = random_batch(algo, B=4)
    rounds = []
    for step in range(4, 1001, 4):  # 4 env copies per vector step
        algo.replay.add(**{k: batch[k] for k in algo.replay.fields})
        algo.update(step)
        rounds.append(algo.gradient_steps)
    assert rounds[-1] == 9  # at 200, 300, ..., 1000
    assert (rounds[48], rounds[49]) == (0, 1)  # env step 196: 196 transitions, too few; 200: the first round


# ---------------------------------------------------------------------------- continuous_policy=gumbel (openai's semantics)
def test_gumbel_policy_acts_with_the_soft_sample_itself():
    algo = make_algo(continuous=True, continuous_policy="gumbel")
    obs = random_batch(algo, B=256)["obs"]
    state = algo.generator.get_state()
    actions = algo.act(obs, 0)
    algo.generator.set_state(state)  # replay the same noise for the reference
    with torch.no_grad():
        for group, actor in zip(algo.groups, algo.actors):
            logits = actor(algo.own_obs(group, obs))
            soft = gumbel_softmax(logits, 1.0, hard=False, generator=algo.generator).transpose(0, 1)
            torch.testing.assert_close(actions[:, group.agents], soft)
            torch.testing.assert_close(algo.act(obs, 0, greedy=True)[:, group.agents], torch.softmax(logits, -1).transpose(0, 1))
    torch.testing.assert_close(actions.sum(-1), torch.ones(256, 3))
    assert ((actions > 0.01) & (actions < 0.99)).float().mean() > 0.5  # graded, not a one-hot of the sample's argmax


@pytest.mark.parametrize("continuous, policy", [(True, "gumbel"), (True, "noise"), (False, "noise")])
def test_greedy_eval_false_evaluates_with_the_behaviour_policys_sample(continuous, policy):
    sampled = make_algo(continuous=continuous, continuous_policy=policy, greedy_eval=False)
    reference = make_algo(continuous=continuous, continuous_policy=policy)
    obs = random_batch(sampled, B=128)["obs"]
    state = sampled.generator.get_state()
    evaluated = sampled.act(obs, 0, greedy=True)
    reference.generator.set_state(state)  # same weights (seed 0), same noise
    torch.testing.assert_close(evaluated, reference.act(obs, 0))  # the exploring sample, not the greedy action
    assert not torch.equal(evaluated, reference.act(obs, 0, greedy=True))


def test_gumbel_policy_moves_the_agent_by_the_soft_sample_in_mpe2():
    env = make_simple_adversary(SimpleAdversaryConfig(continuous_actions=True, N=2, max_cycles=25, success_radius=0.16), 1, 0, 0)
    obs = env.reset()
    action = torch.zeros(1, 3, 5)
    action[0, 0] = torch.tensor([0.1, 0.1, 0.5, 0.2, 0.1])  # a soft sample: right 0.4 net, up -0.1 net
    first = env.step(action).next_obs
    second = env.step(torch.zeros(1, 3, 5)).next_obs
    moved = -(second[0, 0, 0:2] - first[0, 0, 0:2])  # the adversary's own displacement (landmarks stay still)
    # mpe2 moves an agent from rest to velocity (a2 - a1, a4 - a3) x sensitivity 5 x dt (0.1), which moves it by
    # velocity x dt in the next step (it updates positions before velocities)
    torch.testing.assert_close(moved, torch.tensor([0.4, -0.1]) * 5 * 0.01, atol=1e-5, rtol=0)
    torch.testing.assert_close(first[0, 0], obs[0, 0])
    env.close()


def test_gumbel_policy_gradient_reaches_the_actor_through_the_soft_sample():
    algo = make_algo(continuous=True, continuous_policy="gumbel")
    batch = random_batch(algo)
    algo.actor_losses(batch).sum().backward()
    for actor in algo.actors:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())
    logits = torch.randn(2, 64, 5, requires_grad=True)
    action = algo.policy(logits)
    assert ((action > 0) & (action < 1)).all()  # soft in the update too
    (action * torch.arange(5.0)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_unknown_continuous_policy_is_a_clear_error():
    with pytest.raises(UserError, match="continuous_policy"):
        MADDPGConfig(continuous_policy="softmax")
