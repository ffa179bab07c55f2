"""Distributional critics (GMAC for PPO, the Gaussian-mixture critic for MADDPG): the closed-form energy distance
against Monte Carlo and its special cases, GMAC's sample-replacement targets at lambda 1 and 0, the mixture
cross-entropy against a direct log-density, gradients into every head, exact resume (GMAC's in test_ppo.py's
resume test), one-line refusals, and the evaluation's picture of the predicted returns."""

import copy
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributions import Categorical, MixtureSameFamily, Normal

from conftest import SMALL_PURSUIT
from test_maddpg import make_algo, random_batch
from test_ppo import build, play

from marlrun.algos.distributional import (Mixture, _MeanAbsDifference, acme_head, energy_distance, equal_weights, mean_abs_difference,
                                          sample_replacement_targets)
from marlrun.cli import main
from marlrun.metrics import read_metrics
from marlrun.runner import evaluate, make_env

F64 = torch.float64


def mix(weight, mu, sigma) -> Mixture:
    return Mixture(*(torch.tensor(x, dtype=F64) for x in (weight, mu, sigma)))


# ---------------------------------------------------------------------------- the energy distance
def test_energy_distance_in_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    p, q = mix([0.3, 0.7], [-1.0, 2.0], [0.5, 1.5]), mix([0.2, 0.5, 0.3], [0.0, 1.0, 4.0], [1.0, 0.2, 0.7])
    n = 400_000
    x, x2, y, y2 = p.sample(n, g), p.sample(n, g), q.sample(n, g), q.sample(n, g)
    for exact, terms in ((energy_distance(p, q), 2 * (x - y).abs() - (x - x2).abs() - (y - y2).abs()),
                         (mean_abs_difference(p, q), (x - y).abs()), (mean_abs_difference(p, p), (x - x2).abs())):
        error = terms.std().item() / math.sqrt(n)
        assert abs(exact.item() - terms.mean().item()) < 4 * error, (exact.item(), terms.mean().item(), error)
    assert energy_distance(p, q).item() > 10 * error  # and it is far from 0: these differ


@pytest.mark.parametrize("x, y", [(0.0, 1.0), (-2.5, 3.0), (1.0, 1.0)])
def test_point_masses_are_twice_their_distance_apart(x, y):
    d = energy_distance(mix([1.0], [x], [0.0]), mix([1.0], [y], [0.0]))
    assert d.item() == pytest.approx(2 * abs(x - y), abs=1e-9)


def test_known_values_and_identical_mixtures():
    p = mix([0.5, 0.5], [0.0, 1.0], [0.0, 0.0])  # a fair coin on {0, 1} against a point mass at 0:
    assert energy_distance(p, mix([1.0], [0.0], [0.0])).item() == pytest.approx(0.5, abs=1e-9)  # 2 (1/2) - 1/2 - 0
    q = mix([0.2, 0.5, 0.3], [0.0, 1.0, 4.0], [1.0, 0.2, 0.7])
    assert abs(energy_distance(q, q).item()) < 1e-12
    assert energy_distance(q, p).item() > 0.1
    # the loss form leaves out exactly the target's own term
    torch.testing.assert_close(energy_distance(q, p, target_term=False) - mean_abs_difference(p, p), energy_distance(q, p))


def test_value_normalisation_scales_the_loss_consistently():
    # the learner compares mixtures in the normaliser's units, (x - shift) / scale for locations and x / scale for
    # standard deviations: the energy distance is then the returns' distance divided by the scale
    p, q = mix([0.3, 0.7], [-1.0, 2.0], [0.5, 1.5]), mix([0.2, 0.5, 0.3], [0.0, 1.0, 4.0], [1.0, 0.2, 0.7])
    shift, scale = 3.0, 2.5
    normalised = energy_distance(p.affine(1 / scale, -shift / scale), q.affine(1 / scale, -shift / scale))
    torch.testing.assert_close(normalised, energy_distance(p, q) / scale)
    torch.testing.assert_close(p.affine(scale, shift).mean(), scale * p.mean() + shift)
    torch.testing.assert_close(p.affine(scale, shift).std(), scale * p.std())


def test_closed_form_gradients_match_autograd():
    g = torch.Generator().manual_seed(1)
    inputs = []
    for k in (4, 6):
        inputs += [torch.rand(3, k, generator=g, dtype=F64).softmax(-1), torch.randn(3, k, generator=g, dtype=F64),
                   torch.rand(3, k, generator=g, dtype=F64) + 0.1]
    assert torch.autograd.gradcheck(_MeanAbsDifference.apply, [x.requires_grad_() for x in inputs])


# ---------------------------------------------------------------------------- GMAC's targets
def test_sample_replacement_with_lambda_one_is_the_discounted_sum_to_the_rollouts_end():
    T, gamma = 6, 0.9
    g = torch.Generator().manual_seed(2)
    reward = torch.randn(T, 2, generator=g, dtype=F64)
    terminated = torch.zeros(T, 2, dtype=torch.bool)
    ended = torch.zeros(T, 2, dtype=torch.bool)
    terminated[3, 0] = ended[3, 0] = True  # env 0's episode terminates at step 3
    ended[1, 1] = True  # env 1's is cut at step 1 (truncated: it bootstraps from its final state)
    next_value = Mixture(torch.ones(T, 2, 1, dtype=F64), torch.randn(T, 2, 1, generator=g, dtype=F64), torch.rand(T, 2, 1, generator=g, dtype=F64))
    mu, sigma = sample_replacement_targets(reward, terminated, ended, next_value, gamma, 1.0, samples=8, generator=g)
    for e in range(2):
        for t in range(T):
            end = next(j for j in range(t, T) if ended[j, e] or j == T - 1)
            tail = gamma ** (end - t + 1) * (0.0 if terminated[end, e] else 1.0)
            want_mu = sum(gamma ** (i - t) * reward[i, e] for i in range(t, end + 1)) + tail * next_value.mu[end, e, 0]
            torch.testing.assert_close(mu[t, e], want_mu.expand(8))
            torch.testing.assert_close(sigma[t, e], (tail * next_value.sigma[end, e, 0]).expand(8))


def test_sample_replacement_with_lambda_zero_is_one_step_bootstrapping():
    T, gamma, M = 4, 0.95, 2_000
    g = torch.Generator().manual_seed(3)
    reward = torch.randn(T, 1, generator=g, dtype=F64)
    terminated = torch.tensor([[False], [True], [False], [False]])
    next_value = Mixture(torch.tensor([0.25, 0.75], dtype=F64).expand(T, 1, 2), torch.tensor([-3.0, 5.0], dtype=F64).expand(T, 1, 2),
                         torch.tensor([0.5, 2.0], dtype=F64).expand(T, 1, 2))
    mu, sigma = sample_replacement_targets(reward, terminated, terminated.clone(), next_value, gamma, 0.0, samples=M, generator=g)
    for t in range(T):
        keep = 0.0 if terminated[t, 0] else gamma
        bootstrap = Mixture(*(x[t, 0] for x in next_value)).affine(keep, reward[t, 0]) if keep else mix([1.0], [reward[t, 0].item()], [0.0])
        if keep:  # each sample is r + gamma times one of V(s')'s components, drawn by weight
            second = (mu[t, 0] - reward[t, 0] - keep * 5.0).abs() < 1e-9
            assert torch.all(second | ((mu[t, 0] - reward[t, 0] + keep * 3.0).abs() < 1e-9))
            torch.testing.assert_close(sigma[t, 0], torch.where(second, keep * 2.0, keep * 0.5).double())
            assert abs(second.double().mean().item() - 0.75) < 4 * math.sqrt(0.75 * 0.25 / M)
        # and the target mixture is r + gamma V(s') in distribution
        assert energy_distance(equal_weights(mu[t, 0], sigma[t, 0]), bootstrap).item() < 0.02


# ---------------------------------------------------------------------------- the mixture critic's loss
def test_mixture_log_density_and_the_critic_loss_match_torch_distributions():
    g = torch.Generator().manual_seed(4)
    p = Mixture(torch.rand(5, 3, generator=g).softmax(-1), torch.randn(5, 3, generator=g), torch.rand(5, 3, generator=g) + 0.05)
    x = 3 * torch.randn(5, 7, generator=g)
    direct = MixtureSameFamily(Categorical(probs=p.weight), Normal(p.mu, p.sigma)).log_prob(x.T).T
    torch.testing.assert_close(p.log_prob(x), direct)

    algo = make_algo(critic_distribution="mixture", mixture_samples=6)
    batch = random_batch(algo)
    y = algo.td_targets(batch)  # [B, A, M]
    assert y.shape == (64, algo.n_agents, 6) and y.std(-1).mean() > 0  # samples of the target critic's mixture
    losses, _, _ = algo.critic_losses(batch, y)
    x_joint = algo.joint_obs(batch["obs"])
    for k, (group, critic) in enumerate(zip(algo.groups, algo.critics)):
        n = len(group.agents)
        q = acme_head(algo.q_value(k, critic, x_joint, algo.own_obs(group, batch["obs"]), batch["action"].expand(n, *batch["action"].shape)), 1e-3)
        for i, agent in enumerate(group.agents.tolist()):
            reference = MixtureSameFamily(Categorical(probs=q.weight[i]), Normal(q.mu[i], q.sigma[i]))
            torch.testing.assert_close(losses[agent], -reference.log_prob(y[:, agent].T).mean(), rtol=1e-4, atol=1e-4)


def test_a_fresh_mixture_critic_starts_at_acmes_small_scale():
    algo = make_algo(critic_distribution="mixture", mixture_init_scale=1e-3)
    (_, _, q), *_ = algo.return_distribution(random_batch(algo)["obs"])
    assert q.sigma.min() > 0.5e-3 and q.sigma.max() < 2e-3


# ---------------------------------------------------------------------------- gradients, resume
def head_gradients(layer) -> torch.Tensor:
    """Per output column of a set layer, the summed |gradient| of its weights."""
    return layer.weight.grad.abs().sum(dim=tuple(range(layer.weight.grad.dim() - 1)))


@pytest.mark.parametrize("algo_name", ["ippo", "mappo"])
def test_gmac_gradients_reach_every_head(compose_cfg, algo_name):
    _, env, algo = build(compose_cfg, f"algo={algo_name}", "algo.critic_distribution=gmac", "algo.mixture_components=3")
    _, logs = play(env, algo, 8)  # one update
    assert {"train/value_mean", "train/value_std", "train/target_std"} <= logs[-1].keys()
    last = [m for m in algo.critics[0].rest.modules() if hasattr(m, "weight")][-1]
    grads = head_gradients(last)
    assert grads.shape == (9,) and torch.all(grads > 0)  # 3 weights, 3 means, 3 scales
    actor_last = [m for m in algo.actors[0].modules() if hasattr(m, "weight")][-1]
    assert head_gradients(actor_last).min() > 0
    env.close()


def test_mixture_critic_gradients_reach_every_head_and_the_actor_maximises_its_mean():
    algo = make_algo(critic_distribution="mixture", mixture_components=4)
    before = [p.detach().clone() for p in algo.actors.parameters()]
    metrics = algo.update_round(random_batch(algo))
    assert {"train/q_std", "train/target_std"} <= metrics.keys()
    for critic in algo.critics:
        last = [m for m in critic.modules() if hasattr(m, "weight")][-1]
        assert torch.all(head_gradients(last) > 0)  # 4 weights, 4 means, 4 scales
    assert all(not torch.equal(a, b) for a, b in zip(before, algo.actors.parameters()))


def test_mixture_critic_resume_is_exact():
    algo = make_algo(critic_distribution="mixture")
    batch = random_batch(algo, B=100)
    algo.replay.add(**{k: batch[k] for k in algo.replay.fields})
    algo.update_round(algo.replay.sample(64))
    other = make_algo(critic_distribution="mixture")
    other.load_state_dict(copy.deepcopy(algo.state_dict()))
    for _ in range(3):
        a, b = algo.update_round(algo.replay.sample(64)), other.update_round(other.replay.sample(64))
        assert all(torch.equal(a[k], b[k]) for k in a)
    for p, q in zip(algo.nets.state_dict().values(), other.nets.state_dict().values()):
        assert torch.equal(p, q)


# ---------------------------------------------------------------------------- the command line
MADDPG_SMALL = ["algo=maddpg", "env=simple_adversary", "hardware=cpu", "hardware.num_envs=2", "hardware.env_workers=0",
                "algo.learning_starts=100", "algo.batch_size=32", "algo.update_interval=20"]


@pytest.mark.parametrize("overrides, says", [
    (["algo=mappo", "algo.critic_distribution=quantile"], "algo.critic_distribution: unknown critic distribution 'quantile'; pick one of mean, gmac"),
    (["algo=mappo", "algo.critic_distribution=gmac", "algo.mixture_components=0"], "algo.mixture_components: must be >= 1, got 0"),
    (["algo=ippo", "algo.critic_distribution=gmac", "algo.gmac_samples=0"], "algo.gmac_samples: must be >= 1, got 0"),
    (["algo=mappo", "algo.critic_distribution=gmac", "algo.gmac_lambda=1.5"], "algo.gmac_lambda: must be in [0, 1], got 1.5"),
    (["algo=mappo", "algo.critic_distribution=gmac", "algo.gmac_lambda=-0.1"], "algo.gmac_lambda: must be in [0, 1], got -0.1"),
    ([*MADDPG_SMALL, "algo.critic_distribution=gmac"], "algo.critic_distribution: unknown critic distribution 'gmac'; pick one of mean, mixture"),
    ([*MADDPG_SMALL, "algo.critic_distribution=mixture", "algo.mixture_components=0"], "algo.mixture_components: must be >= 1, got 0"),
    ([*MADDPG_SMALL, "algo.critic_distribution=mixture", "algo.mixture_samples=0"], "algo.mixture_samples: must be >= 1, got 0"),
    ([*MADDPG_SMALL, "algo.critic_distribution=mixture", "algo.mixture_init_scale=0"], "algo.mixture_init_scale: must be > 0"),
])
def test_bad_distribution_settings_are_one_line(tmp_path, capsys, overrides, says):
    code = main(["train", *overrides, f"hydra.run.dir={tmp_path / 'run'}", "total_steps=1000", "progress=false", "print_config=false"])
    err = capsys.readouterr().err
    assert code != 0 and says in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.startswith("marlrun: error:")]) == 1
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("overrides, teams", [
    ([*SMALL_PURSUIT, "algo=mappo", "algo.critic_distribution=gmac", "algo.rollout_steps=25"], [""]),
    ([*MADDPG_SMALL, "algo.critic_distribution=mixture"], ["/adversary", "/good"]),
])
def test_evaluation_draws_the_predicted_returns_against_the_observed_ones(tmp_path, capsys, overrides, teams):
    run = tmp_path / "run"
    code = main(["train", *overrides, "total_steps=300", "log_interval=100", "eval_interval=100", "eval_episodes=3",
                 "progress=false", "print_config=false", f"hydra.run.dir={run}"])
    assert code == 0, capsys.readouterr().err
    evals = [r for r in read_metrics(run) if "eval/episode_return" in r]
    assert [r["step"] for r in evals] == [0, 100, 200, 300]
    for record in evals:
        for team in teams:
            assert record[f"eval/predicted_return_std{team}"] > 0
            assert math.isfinite(record[f"eval/predicted_return_mean{team}"] + record[f"eval/observed_discounted_return{team}"])
    pictures = sorted(p.name for p in (run / "return_distribution").iterdir())
    assert pictures == [f"step_{step:09d}.png" for step in (0, 100, 200, 300)]
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("eval/return_distribution")] == [0, 100, 200, 300]
    assert main(["eval", str(run)]) == 0  # `marlrun eval` draws it too, beside its result
    assert (run / "eval" / "step_300_seed_0_returns.png").stat().st_size > 10_000


class ConstantCritic:
    """Plays action 0 everywhere; its critic predicts N(c, 1) in every state."""

    def __init__(self, spec, c: float, gamma: float):
        self.spec, self.c = spec, c
        self.cfg = type("Cfg", (), {"gamma": gamma})()

    def act(self, obs, env_steps, greedy=False, context=None):
        return torch.zeros(obs.shape[0], self.spec.n_agents, dtype=torch.long)

    def return_distribution(self, obs, context=None):
        E, A = obs.shape[0], self.spec.n_agents
        return [("all", torch.arange(A), Mixture(torch.ones(E, A, 1), torch.full((E, A, 1), self.c), torch.ones(E, A, 1)))]


def test_observed_returns_add_the_critics_value_where_the_time_limit_cut_the_episode(compose_cfg):
    cfg = compose_cfg(MADDPG_SMALL)
    env, reference = make_env(cfg, 3, 5, torch.device("cpu")), make_env(cfg, 3, 5, torch.device("cpu"))
    gamma, c = 0.9, 7.0
    algo = ConstantCritic(env.spec, c, gamma)
    probe: dict = {}
    evaluate(algo, env, 0, probe=probe)
    (_, mixture, observed), = probe["teams"]
    assert torch.equal(mixture.mean(), torch.full((3, 3), c))
    reference.reset()  # the same seeds, the same actions: sum the discounted rewards by hand, then the cut's tail
    want, t = torch.zeros(3, 3), 0
    while True:
        step = reference.step(torch.zeros(3, 3, dtype=torch.long))
        want += gamma**t * step.reward
        t += 1
        if step.episode_end.all():
            assert not step.terminated.any()  # simple_adversary's episodes end by the time limit
            break
    torch.testing.assert_close(observed, want + gamma**t * c)
    env.close()
    reference.close()


def test_mean_critics_draw_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL_PURSUIT, "algo=ippo", "algo.rollout_steps=25", "total_steps=100", "log_interval=50",
                 "eval_interval=100", "eval_episodes=2", f"hydra.run.dir={run}"]) == 0
    assert not (run / "return_distribution").exists()
    assert not any(k.startswith("eval/predicted") for r in read_metrics(run) for k in r)
