"""QMIX and VDN: the mixers' math, double-Q targets from target networks, independent agents, resume, learning."""

import copy

import pytest
import torch
from omegaconf import OmegaConf

from conftest import SMALL_PURSUIT
from test_learning import EPISODES, random_return

from marlrun.algos.qmix import QMIX, QMixer
from marlrun.checkpoint import checkpoint_paths
from marlrun.metrics import read_metrics
from marlrun.runner import make_env, train

QMIX_SMALL = [*SMALL_PURSUIT, "algo=qmix", "algo.buffer_size=5000", "algo.learning_starts=100"]


def build(compose_cfg, *overrides, num_envs=2):
    cfg = compose_cfg([*QMIX_SMALL, *overrides])
    env = make_env(cfg, num_envs, 0, torch.device("cpu"))
    env.provide_state = True  # as the runner sets it for QMIX
    algo = QMIX(OmegaConf.to_object(cfg.algo), env.spec, num_envs, torch.device("cpu"), 0)
    return cfg, env, algo


def fill(env, algo, steps):
    obs = env.reset()
    for t in range(steps):
        context = env.context()
        actions = algo.act(obs, t * env.num_envs, context=context)
        step = env.step(actions)
        algo.observe(obs, actions, step, context)
        obs = step.obs


def test_qmix_mixer_is_monotonic_in_every_agents_q():
    torch.manual_seed(0)
    mixer = QMixer(n_agents=4, state_size=12, embed=8, hypernet_embed=16)
    for p in mixer.parameters():  # large, mixed-sign weights: monotonicity must come from the abs, not from luck
        p.data.normal_(0, 2.0)
    q = torch.randn(256, 4, requires_grad=True)
    state = torch.randn(256, 12)
    grad, = torch.autograd.grad(mixer(q, state).sum(), q)
    assert (grad >= 0).all() and (grad > 0).float().mean() > 0.5


def test_mixer_slope_is_dqtot_dqa_and_vanishes_when_every_elu_is_saturated():
    torch.manual_seed(0)
    mixer = QMixer(n_agents=4, state_size=12, embed=8, hypernet_embed=16)
    q = torch.randn(64, 4, requires_grad=True)
    state = torch.randn(64, 12)
    grad, = torch.autograd.grad(mixer(q, state).sum(), q)  # row b of Q_tot depends on row b of q only
    assert torch.allclose(mixer.slope(q.detach(), state), grad, atol=1e-6)
    # every hidden unit's input far below 0: Q_tot no longer depends on the agents' Qs
    mixer.hyper_b1.bias.data.fill_(-30.0)
    assert mixer.slope(q.detach(), state).abs().max() < 1e-6


def test_gradient_step_logs_the_mixer_slope(compose_cfg):
    _, env, algo = build(compose_cfg)
    fill(env, algo, 60)
    metrics = algo.gradient_step()
    assert 0 < metrics["train/mixer_slope"] < float("inf")
    _, env, vdn = build(compose_cfg, "algo.mixer=vdn")
    fill(env, vdn, 60)
    assert vdn.gradient_step()["train/mixer_slope"] == 1.0


def test_standardised_rewards_enter_the_target_as_r_minus_mean_over_std(compose_cfg):
    _, env, plain = build(compose_cfg)
    _, _, scaled = build(compose_cfg, "algo.standardise_rewards=true")
    scaled.load_state_dict(plain.state_dict(include_replay=False) | {"reward_norm": scaled.reward_norm.state_dict()})
    obs = env.reset()
    rewards = []
    for t in range(60):
        context = env.context()
        actions = plain.act(obs, t * env.num_envs, context=context)
        step = env.step(actions)
        for algo in (plain, scaled):
            algo.observe(obs, actions, step, context)
        rewards.append(step.reward.sum(-1))
        obs = step.obs
    rewards = torch.cat(rewards)
    mean, std = scaled.reward_norm.stats()
    assert torch.allclose(mean, rewards.mean(), atol=1e-3) and torch.allclose(std, rewards.std(correction=0).clamp(min=0.1), rtol=1e-2)
    batch = plain.replay.sample(16)
    with torch.no_grad():
        # same networks, same transitions: the targets differ by exactly the reward's standardisation
        diff = scaled.td_error(batch)[0] - plain.td_error(batch)[0]
    assert torch.allclose(diff, (batch["reward"] - mean) / std - batch["reward"], atol=1e-4)


def test_vdn_mix_is_the_sum(compose_cfg):
    _, env, algo = build(compose_cfg, "algo.mixer=vdn")
    q = torch.randn(5, env.spec.n_agents)
    assert torch.allclose(algo.mixer(q, torch.randn(5, 3)), q.sum(-1))


def test_target_is_double_q_through_the_target_agents_and_mixer(compose_cfg):
    _, env, algo = build(compose_cfg)
    fill(env, algo, 60)
    for p in [*algo.target_agents.parameters(), *algo.target_mixer.parameters()]:
        p.data.add_(0.1 * torch.randn_like(p))  # targets differ from the online networks
    batch = algo.replay.sample(16)
    with torch.no_grad():
        td = algo.td_error(batch)[0]
        s, s2 = batch["state"].flatten(1), batch["next_state"].flatten(1)
        q = algo.agent_q(algo.agents, batch["obs"]).gather(-1, batch["action"].unsqueeze(-1)).squeeze(-1)
        best = algo.agent_q(algo.agents, batch["next_obs"]).argmax(-1, keepdim=True)  # the online agents choose
        q_next = algo.agent_q(algo.target_agents, batch["next_obs"]).gather(-1, best).squeeze(-1)  # the target ones evaluate
        expected = batch["reward"] + algo.cfg.gamma * (1 - batch["terminated"]) * algo.target_mixer(q_next, s2) - algo.mixer(q, s)
        assert torch.allclose(td, expected, atol=1e-5)
        algo.sync_targets()
        assert not torch.allclose(algo.td_error(batch)[0], td, atol=1e-4)


def test_team_reward_state_and_terminal_flag_in_replay(compose_cfg):
    _, env, algo = build(compose_cfg)
    obs = env.reset()
    context = env.context()
    actions = algo.act(obs, 0, context=context)
    step = env.step(actions)
    algo.observe(obs, actions, step, context)
    assert torch.allclose(algo.replay.reward[:2], step.reward.sum(-1))
    assert torch.equal(algo.replay.state[:2].float(), context["state"]) and torch.equal(algo.replay.next_state[:2].float(), step.next_state)


def test_independent_agents_do_not_see_each_others_inputs(compose_cfg):
    _, env, algo = build(compose_cfg, "algo.parameter_sharing=false")
    obs = env.reset()
    changed = obs.clone()
    changed[:, 1] = torch.rand_like(changed[:, 1])
    before, after = algo.agent_q(algo.agents, obs), algo.agent_q(algo.agents, changed)
    assert torch.equal(before[:, 0], after[:, 0]) and not torch.allclose(before[:, 1], after[:, 1])
    # and a gradient step on agent 0's Q moves only agent 0's weight set
    loss = algo.agent_q(algo.agents, obs)[:, 0, 0].sum()  # one action: the dueling mean cancels in a sum over actions
    grads = torch.autograd.grad(loss, list(algo.agents.parameters()))
    assert all(g[1:].abs().sum() == 0 and g[0].abs().sum() > 0 for g in grads)


def test_shared_agents_tell_agents_apart_by_their_id(compose_cfg):
    _, env, algo = build(compose_cfg)
    obs = env.reset()
    same = obs[:, :1].expand_as(obs).contiguous()  # every agent sees agent 0's observation
    q = algo.agent_q(algo.agents, same)
    assert not torch.allclose(q[:, 0], q[:, 1])


SHORT = [*QMIX_SMALL, "total_steps=600", "log_interval=200", "checkpoint_interval=400", "eval_episodes=2", "eval_interval=400"]


@pytest.mark.parametrize("mixer, standardise", [("qmix", "false"), ("vdn", "false"), ("qmix", "true")])
def test_resume_is_exact(compose_cfg, tmp_path, mixer, standardise):
    # a learner rebuilt from its state_dict continues exactly as the original on the same transitions
    _, env, original = build(compose_cfg, f"algo.mixer={mixer}", f"algo.standardise_rewards={standardise}")
    fill(env, original, 80)
    original.update(1000)
    _, _, restored = build(compose_cfg, f"algo.mixer={mixer}", f"algo.standardise_rewards={standardise}")
    restored.load_state_dict(copy.deepcopy(original.state_dict()))  # as a checkpoint does: no tensor shared with the original
    obs = env.reset()
    for t in range(20):
        context = env.context()
        actions = original.act(obs, 1000 + 2 * t, context=context)
        assert torch.equal(actions, restored.act(obs, 1000 + 2 * t, context=context))
        step = env.step(actions)
        for algo in (original, restored):
            algo.observe(obs, actions, step, context)
        a, b = original.update(1000 + 2 * t), restored.update(1000 + 2 * t)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        obs = step.obs
    for p, q in zip(original.agents.parameters(), restored.agents.parameters()):
        assert torch.equal(p, q)

    # and through the runner: stop at a checkpoint, resume to the end, the log has every step
    part = tmp_path / "part"
    train(compose_cfg([*SHORT, f"algo.mixer={mixer}", f"algo.standardise_rewards={standardise}", "total_steps=400"]), part)
    assert checkpoint_paths(part)
    summary = train(compose_cfg([*SHORT, f"algo.mixer={mixer}", f"algo.standardise_rewards={standardise}", f"resume={part}"]), part)
    assert summary["env_steps"] == 600 and [r["step"] for r in read_metrics(part)] == [0, 200, 400, 600]


LEARN = [*SMALL_PURSUIT, "algo=qmix", "env.n_evaders=5", "env.surround=false", "env.n_catch=1", "env.max_cycles=100",
         "total_steps=12000", "log_interval=3000", "eval_interval=0", f"eval_episodes={EPISODES}", "checkpoint_interval=1000000",
         "save_replay=false", "hardware.torch_threads=1", "algo.buffer_size=20000", "algo.epsilon_decay_steps=5000",
         "algo.target_update_interval=500"]


@pytest.mark.parametrize("mixer", ["qmix", "vdn"])
def test_greedy_policy_beats_random_on_small_pursuit(compose_cfg, tmp_path, mixer):
    cfg = compose_cfg([*LEARN, f"algo.mixer={mixer}"])
    learned, baseline = train(cfg, tmp_path)["final_eval_return"], random_return(cfg)
    print(f"{mixer}: greedy {learned:.2f} vs random {baseline:.2f} over {EPISODES} episodes")
    assert learned > baseline + 3.0  # a catch is worth +5 to the pursuer that makes it
