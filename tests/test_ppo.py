"""IPPO and MAPPO: GAE and the clipped loss against references, masks, bounded actions, inputs, resume, learning."""

import copy
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution

from conftest import SMALL_PURSUIT
from test_learning import RandomPolicy, random_return

from marlrun.algos.ppo import PPO, clipped_surrogate, gae, squash, squashed_gaussian_log_prob
from marlrun.cli import main
from marlrun.config import validate
from marlrun.runner import env_seed, evaluate, make_env, train

CPU = torch.device("cpu")
PPO_SMALL = [*SMALL_PURSUIT, "algo.rollout_steps=8"]  # pursuit's; another env= takes only the run and hardware keys
OTHER_ENV = ["hardware=cpu", "hardware.env_workers=0", "progress=false", "print_config=false", "algo.rollout_steps=8"]


def build(compose_cfg, *overrides, num_envs=2):
    base = OTHER_ENV if any(o.startswith("env=") for o in overrides) else PPO_SMALL
    cfg = validate(compose_cfg([*base, *overrides]))
    env = make_env(cfg, num_envs, 0, CPU)
    algo = PPO(OmegaConf.to_object(cfg.algo), env.spec, num_envs, CPU, 0)
    env.provide_state = algo.uses_state  # as the runner does
    return cfg, env, algo


def play(env, algo, steps, start=0, obs=None):
    """Act, step, observe and update ``steps`` times; returns the last observation and every update's metrics."""
    obs = env.reset() if obs is None else obs
    logs = []
    for t in range(steps):
        context = env.context()
        actions = algo.act(obs, (start + t) * env.num_envs, context=context)
        step = env.step(actions)
        algo.observe(obs, actions, step, context)
        logs.append(algo.update((start + t + 1) * env.num_envs))
        obs = step.obs
    return obs, logs


# ---------------------------------------------------------------------------- GAE and the loss
def test_gae_against_a_hand_computed_reference():
    # one agent, 5 steps; the episode is truncated after step 1 (bootstrap from the true final observation's value)
    # and terminated at step 3 (no bootstrap); step 4 starts a new episode and the rollout ends mid-episode
    g, lam = 0.9, 0.8
    r = [1.0, 2.0, 0.5, -1.0, 3.0]
    v = [0.2, 0.4, 0.1, 0.3, 0.6]
    v_next = [0.4, 5.0, 0.3, 7.0, 0.9]  # 5.0: V(final observation of the truncated episode); 7.0 is never used
    term = [False, False, False, True, False]
    ended = [False, True, False, True, False]
    deltas = [r[t] + g * (0.0 if term[t] else v_next[t]) - v[t] for t in range(5)]
    expected = [0.0] * 5
    expected[4] = deltas[4]
    expected[3] = deltas[3]  # terminated: nothing after it
    expected[2] = deltas[2] + g * lam * expected[3]
    expected[1] = deltas[1]  # truncated: the sum stops, the bootstrap (5.0) stays in its delta
    expected[0] = deltas[0] + g * lam * expected[1]
    col = lambda xs, dtype=torch.float32: torch.tensor(xs, dtype=dtype).view(5, 1)  # noqa: E731
    got = gae(col(r), col(v), col(v_next), col(term, torch.bool), col(ended, torch.bool), torch.ones(5, 1), g, lam)
    assert torch.allclose(got.view(-1), torch.tensor(expected), atol=1e-6)
    assert math.isclose(deltas[1], 2.0 + 0.9 * 5.0 - 0.4)


def test_gae_gives_dead_agents_nothing_and_stops_at_their_death():
    # agent 0 dies (terminated) at step 1 and stays dead; agent 1 lives throughout with the same numbers
    reward = torch.tensor([[1.0, 1.0], [2.0, 2.0], [9.0, 0.5], [9.0, 0.5]])
    value = torch.tensor([[0.1, 0.1], [0.2, 0.2], [5.0, 0.3], [5.0, 0.3]])
    next_value = torch.tensor([[0.2, 0.2], [5.0, 0.3], [5.0, 0.3], [5.0, 0.1]])
    terminated = torch.tensor([[False, False], [True, False], [False, False], [False, False]])
    alive = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    adv = gae(reward, value, next_value, terminated, terminated.clone(), alive, 0.99, 0.95)
    assert torch.all(adv[2:, 0] == 0)  # no advantage while dead, whatever the (garbage) rewards and values say
    assert math.isclose(adv[1, 0].item(), 2.0 - 0.2, rel_tol=1e-6)  # its last step: no bootstrap, nothing after
    assert math.isclose(adv[0, 0].item(), (1.0 + 0.99 * 0.2 - 0.1) + 0.99 * 0.95 * (2.0 - 0.2), rel_tol=1e-6)


def test_clipped_surrogate_against_a_reference():
    logp_old = torch.zeros(6)
    ratio = torch.tensor([0.5, 0.9, 1.1, 1.5, 0.5, 1.5])
    advantage = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0])
    loss = clipped_surrogate(ratio.log(), logp_old, advantage, clip=0.2)
    # min(rho A, clip(rho) A): positive A caps the gain at 1.2 A; negative A caps the gain at 0.8 A but never the loss
    expected = -torch.tensor([0.5, 0.9, 1.1, 1.2, -0.8, -1.5])
    assert torch.allclose(loss, expected, atol=1e-6)
    # the gradient vanishes exactly where the clip binds in the objective's favour
    logp = ratio.log().requires_grad_()
    clipped_surrogate(logp, logp_old, advantage, 0.2).sum().backward()
    assert torch.equal(logp.grad == 0, torch.tensor([False, False, False, True, True, False]))


# ---------------------------------------------------------------------------- continuous actions
def test_squashed_gaussian_stays_in_bounds_with_the_right_log_probability():
    low, high = -2.0, 3.0
    mean = torch.tensor([[0.0, 1.5, -4.0], [10.0, -0.3, 2.0]])
    log_std = torch.tensor([[-0.5, 0.0, 0.7], [0.2, -1.0, 0.0]])
    u = mean + log_std.exp() * torch.randn(1000, *mean.shape, generator=torch.Generator().manual_seed(0))
    a = squash(u, low, high)
    assert a.min() >= low and a.max() <= high
    # the log-probability against torch's own tanh-and-affine transformed Gaussian (float64: no saturated tanh)
    mean, log_std = torch.tensor([[0.0, 1.5, -1.0], [0.5, -0.3, 1.0]], dtype=torch.float64), log_std.double()
    u = mean + log_std.exp() * torch.randn(1000, *mean.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reference = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform(), AffineTransform((low + high) / 2, (high - low) / 2)])
    ours = squashed_gaussian_log_prob(u, mean, log_std, low, high)
    assert torch.allclose(ours, reference.log_prob(squash(u, low, high)).sum(-1), atol=1e-6)
    # and it is a density: on one dimension it integrates to 1 over the bounds
    grid = torch.linspace(-12, 12, 200_001)
    density = squashed_gaussian_log_prob(grid.view(-1, 1), torch.tensor([0.4]), torch.tensor([0.3]), low, high).exp()
    actions = squash(grid, low, high)
    assert math.isclose(torch.trapezoid(density, actions).item(), 1.0, rel_tol=1e-3)


def test_continuous_policy_acts_in_bounds_and_learns_through_its_log_std(compose_cfg):
    _, env, algo = build(compose_cfg, "algo=mappo", "env=simple_adversary", "env.continuous_actions=true", num_envs=4)
    with torch.no_grad():
        algo.log_stds[0].fill_(2.0)  # wide noise pushes samples into the tails
    obs, logs = play(env, algo, 8)
    low, high = env.spec.action_bounds
    actions = algo.act(obs, 0)
    assert actions.shape == (4, 3, 5) and actions.min() >= low and actions.max() <= high
    assert "train/policy_loss" in logs[-1]
    assert all(not torch.all(p == 2.0) for p in algo.log_stds.parameters())  # the updates moved every team's log std
    env.close()


# ---------------------------------------------------------------------------- masks, inputs, teams
def test_dead_samples_contribute_nothing_to_the_update(compose_cfg):
    _, env, algo = build(compose_cfg, "algo=mappo")
    play(env, algo, 4)
    k, team = 0, algo.learners[0]
    S, N = 1, 16
    gen = torch.Generator().manual_seed(1)
    own = torch.randn(S, N, algo.actors[0][1][0].weight.shape[1], generator=gen)  # the first layer after the (empty) torso
    state = torch.randn(N // team.n, algo.critics[0].state.shape[1], generator=gen)
    rows = team.state_rows(N // team.n, CPU)
    mb = {"advantage": torch.randn(S, N, generator=gen), "target": torch.randn(S, N, generator=gen), "value_old": torch.randn(S, N, generator=gen),
          "raw": torch.randint(0, 5, (S, N), generator=gen), "logp_old": -torch.rand(S, N, generator=gen) * 2,
          "alive": (torch.arange(N) % 3 != 0).float().view(1, N)}
    dead = mb["alive"] == 0

    def grads(own, mb):
        trial = copy.deepcopy(algo)
        trial.minibatch_loss(k, own, state, rows, mb)  # one optimizer step
        return [p.detach().clone() for p in trial.nets.parameters()]

    before = grads(own, mb)
    changed = {key: v.clone() for key, v in mb.items()}
    changed["advantage"][dead] = 1e3
    changed["target"][dead] = -1e3
    changed["raw"][dead] = (changed["raw"][dead] + 2) % 5
    changed["logp_old"][dead] = -20.0
    own_changed = own.clone()
    own_changed[dead] = 100.0
    after = grads(own_changed, changed)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    env.close()


def test_mappo_critic_sees_the_state_and_ippo_only_the_observation(compose_cfg):
    _, env, mappo = build(compose_cfg, "algo=mappo")
    assert mappo.uses_state and mappo.critics[0].state.shape[1] == 8 * 8 * 3  # pursuit's state: the whole 8x8 map
    _, env2, ippo = build(compose_cfg, "algo=ippo")
    assert not ippo.uses_state and ippo.critics[0].state is None
    _, env3, adversary = build(compose_cfg, "algo=mappo", "env=simple_adversary")
    assert not adversary.uses_state and adversary.critics[0].state.shape[1] == 8 + 10 + 10  # every observation
    assert [t.name for t in adversary.learners] == ["adversary", "good"] and len(adversary.actors) == 2
    for e in (env, env2, env3):
        e.close()


def test_independent_weight_sets_do_not_see_each_others_inputs(compose_cfg):
    _, env, algo = build(compose_cfg, "algo=ippo", "algo.parameter_sharing=false")
    team = algo.learners[0]
    assert team.n_sets == 2 and algo.actors[0][1][0].weight.shape[:2] == (2, 7 * 7 * 3)  # no id input
    obs = env.reset()
    other = obs.clone()
    other[:, 1] = torch.rand_like(other[:, 1]) * 3
    out = lambda o: algo.distribution(0, team.to_sets(algo.own_input(team, o)))  # noqa: E731
    with torch.no_grad():
        assert torch.equal(out(obs)[0], out(other)[0]) and not torch.equal(out(obs)[1], out(other)[1])
    env.close()


def test_random_team_acts_at_random_and_does_not_learn(compose_cfg):
    _, env, algo = build(compose_cfg, "algo=mappo", "env=simple_adversary", "algo.random_teams=[adversary]", num_envs=4)
    assert [t.name for t in algo.learners] == ["good"] and len(algo.actors) == 1
    _, logs = play(env, algo, 8)
    assert "train/policy_loss" in logs[-1]
    env.close()


def test_battle_masks_the_dead_and_uses_the_map_as_state(compose_cfg):
    cfg = compose_cfg(["algo=mappo", "env=battle", "env.map_size=12", "env.max_cycles=30", "algo.random_teams=[blue]",
                       "algo.rollout_steps=20", "hardware=cpu", "hardware.num_envs=1", "progress=false", "print_config=false"])
    cfg = validate(cfg)
    env = make_env(cfg, 1, 0, CPU)
    algo = PPO(OmegaConf.to_object(cfg.algo), env.spec, 1, CPU, 0)
    env.provide_state = algo.uses_state
    assert algo.uses_state and algo.critics[0].state.shape[1] == math.prod(env.spec.state_shape)
    died = False
    obs = env.reset()
    for t in range(40):
        context = env.context()
        assert context["state"].shape == (1, *env.spec.state_shape)
        actions = algo.act(obs, t, context=context)
        step = env.step(actions)
        assert step.next_state is not None
        if len(algo.rollout) == algo.cfg.rollout_steps - 1:
            died |= bool((~step.alive).any())
        algo.observe(obs, actions, step, context)
        metrics = algo.update(t + 1)
        obs = step.obs
    assert algo.updates == 2 and all(torch.isfinite(v) for v in metrics.values())
    env.close()


# ---------------------------------------------------------------------------- configs, errors, resume
@pytest.mark.parametrize("overrides", [["algo=ippo"], ["algo=mappo"], ["algo=mappo", "env=simple_adversary"],
                                       ["algo=mappo", "env=battle"], ["experiment=ppo_pursuit"], ["experiment=mappo_adversary"],
                                       ["experiment=mappo_battle"]])
def test_configs_compose_and_validate(compose_cfg, overrides):
    cfg = validate(compose_cfg(overrides))
    assert cfg.algo.name in ("ippo", "mappo") and cfg.algo.anneal_steps >= 1


@pytest.mark.parametrize("override, says", [
    ("algo.random_teams=[nope]", "algo.random_teams: env=pursuit has no team 'nope'"),
    ("algo.random_teams=[pursuer]", "every team of env=pursuit is random"),
    ("algo.critic=global", "algo.critic: unknown critic 'global'"),
    ("algo.gae_lambda=1.5", "algo.gae_lambda: must be in [0, 1]"),
])
def test_mistakes_are_one_line(tmp_path, capsys, override, says):
    code = main(["train", "algo=mappo", override, f"hydra.run.dir={tmp_path / 'run'}", "total_steps=1000", "progress=false", "print_config=false"])
    err = capsys.readouterr().err
    assert code != 0 and says in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("marlrun: error:")]) == 1


@pytest.mark.parametrize("algo_name, critic", [("ippo", "mean"), ("mappo", "mean"), ("mappo", "gmac")])
def test_resume_is_exact(compose_cfg, algo_name, critic):
    # a learner rebuilt from its state_dict (mid-rollout, with a step acted but not yet observed) continues exactly
    # (GMAC: its targets' random draws included)
    overrides = (f"algo={algo_name}", f"algo.critic_distribution={critic}")
    _, env, original = build(compose_cfg, *overrides)
    obs, _ = play(env, original, 13)  # one update done, a rollout half full
    context = env.context()
    pending = original.act(obs, 26, context=context)  # acted, not yet observed: what the runner's pipeline leaves at a checkpoint
    _, _, restored = build(compose_cfg, *overrides)
    restored.load_state_dict(copy.deepcopy(original.state_dict()))
    step = env.step(pending)
    for algo in (original, restored):
        algo.observe(obs, pending, step, context)
    obs = step.obs
    for t in range(14, 30):
        context = env.context()
        actions = original.act(obs, 2 * t, context=context)
        assert torch.equal(actions, restored.act(obs, 2 * t, context=context))
        step = env.step(actions)
        for algo in (original, restored):
            algo.observe(obs, actions, step, context)
        a, b = original.update(2 * t + 2), restored.update(2 * t + 2)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        obs = step.obs
    assert original.updates == 3
    for p, q in zip(original.nets.state_dict().values(), restored.nets.state_dict().values()):
        assert torch.equal(p, q)
    env.close()


# ---------------------------------------------------------------------------- learning
EPISODES = 12
LEARN = [*SMALL_PURSUIT, "env.n_evaders=5", "env.surround=false", "env.n_catch=1", "env.max_cycles=100", "hardware.num_envs=8",
         "algo.rollout_steps=32", "total_steps=48000", "log_interval=8000", "eval_interval=0", f"eval_episodes={EPISODES}",
         "checkpoint_interval=1000000", "hardware.torch_threads=1"]


@pytest.mark.parametrize("algo_name, critic", [("ippo", "mean"), ("mappo", "mean"), ("mappo", "gmac")])
def test_policy_beats_random_on_small_pursuit(compose_cfg, tmp_path, algo_name, critic):
    cfg = compose_cfg([*LEARN, f"algo={algo_name}", f"algo.critic_distribution={critic}"])
    learned, baseline = train(cfg, tmp_path)["final_eval_return"], random_return(cfg)
    print(f"{algo_name} ({critic} critic): {learned:.2f} vs random {baseline:.2f} over {EPISODES} episodes")
    assert learned > baseline + 3.0  # a catch is worth +5 to the pursuer that makes it


def test_mappo_good_agents_beat_random_ones_on_simple_adversary(compose_cfg, tmp_path):
    cfg = compose_cfg(["algo=mappo", "env=simple_adversary", "algo.random_teams=[adversary]", "hardware=cpu", "hardware.env_workers=0",
                       "hardware.num_envs=16", "algo.rollout_steps=50", "algo.epochs=10", "algo.minibatches=1", "algo.lr=7e-4",
                       "algo.critic_lr=7e-4", "total_steps=40000", "eval_interval=0", "eval_episodes=50", "log_interval=10000",
                       "checkpoint_interval=1000000", "hardware.torch_threads=1", "progress=false", "print_config=false"])
    learned = train(cfg, tmp_path)
    env = make_env(cfg, cfg.eval_episodes, env_seed(cfg.seed, 1), CPU)
    baseline = evaluate(RandomPolicy(env.spec.n_actions), env, 0)["eval/team_return/good"]
    env.close()
    trained = learned["evaluations"][-1]["eval/team_return/good"]
    print(f"good team return {trained:.2f} vs random {baseline:.2f}")
    assert trained > baseline + 5.0


def test_shared_conv_torso_equals_the_weight_set_convolutions():
    # one weight set runs nn.Conv2d, several run marlrun's im2col convolutions: same features from the same weights
    from marlrun.algos.ppo import Torso
    shared, sets = Torso(1, 5 * 5 * 3 + 2, (5, 5, 3), [4, 6], 2), Torso(2, 5 * 5 * 3 + 2, (5, 5, 3), [4, 6], 2)
    with torch.no_grad():
        for conv, set_conv in zip(shared.convs[0::2], sets.convs):
            k, c_in, c_out = conv.kernel_size[0], conv.in_channels, conv.out_channels
            set_conv.weight[:] = conv.weight.permute(2, 3, 1, 0).reshape(k * k * c_in, c_out)  # rows (di, dj, c)
            set_conv.bias[:] = conv.bias.view(1, c_out)
    x = torch.rand(1, 7, 5 * 5 * 3 + 2)
    with torch.no_grad():
        a, b = shared(x), sets(x.expand(2, -1, -1))
    assert a.shape == (1, 7, 3 * 3 * 6 + 2) and torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[0], b[1], atol=1e-5)


@pytest.mark.parametrize("sharing", [True, False])
def test_conv_actor_updates_and_clips_its_gradients(compose_cfg, sharing):
    """The actor's convolutions learn, shared (nn.Conv2d, no set dimension) or one weight set per agent."""
    cfg, env, algo = build(compose_cfg, "algo=mappo", "algo.conv_channels=[4,4]", f"algo.parameter_sharing={sharing}",
                           "algo.max_grad_norm=1e-3")
    before = [p.detach().clone() for p in algo.actors[0].parameters()]
    _, logs = play(env, algo, 8)
    assert algo.updates == 1 and all(torch.isfinite(v) for v in logs[-1].values())
    assert all(not torch.equal(a, b) for a, b in zip(before, algo.actors[0].parameters()))
    env.close()


def test_battle_state_survives_a_wiped_out_team(compose_cfg, monkeypatch):
    """magent2's state() fails once a team has no agents left; the adapter's state keeps the other team's channels."""
    from marlrun.envs.battle import library_state

    cfg, env, algo = build(compose_cfg, "algo=mappo", "env=battle", "env.map_size=12", "algo.random_teams=[blue]", num_envs=1)
    env.reset()
    battle = env.envs[0]
    full = library_state(battle)
    blue = battle._all_handles[1]
    get_pos = battle.env.get_pos
    monkeypatch.setattr(battle.env, "get_pos", lambda h: np.zeros((0, 2), dtype=np.int32) if h.value == blue.value else get_pos(h))
    with pytest.raises(ValueError):
        battle.state()  # the library's own
    state = library_state(battle)
    np.testing.assert_array_equal(state[..., 1:3], full[..., 1:3])  # red's presence and hp as before
    assert not state[..., 3:5].any()  # blue's channels empty
    assert battle._all_handles[1] is blue  # the env is left as it was
    env.close()
