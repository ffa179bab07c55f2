"""SUPER sharing heuristics against numpy / statistics references."""

import io
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from marlrun.algos.sharing import HEURISTICS, make_heuristic, shared_fraction


def td_stream(rng, n_batches, n_agents=4, batch=32, p_valid=0.8):
    """Stationary |TD| streams, a different distribution per agent, with some invalid (dead-agent) entries."""
    scales = [1.0, 3.0, 1.0, 0.2]
    for _ in range(n_batches):
        td = np.empty((n_agents, batch))
        for a in range(n_agents):
            if a < 2:
                td[a] = np.abs(rng.normal(0.0, scales[a], size=batch))
            else:
                td[a] = rng.exponential(scales[a], size=batch)
        valid = rng.random((n_agents, batch)) < p_valid
        yield torch.as_tensor(td, dtype=torch.float32), torch.as_tensor(valid)


def run_stream(name, beta, rng, n_batches=500, burn_in=100, **stream_kwargs):
    """Fraction of valid transitions shared per agent after the window has filled."""
    heur = make_heuristic(name, 4, beta=beta, window=1500)
    shared = np.zeros(4)
    total = np.zeros(4)
    for t, (td, valid) in enumerate(td_stream(rng, n_batches, **stream_kwargs)):
        mask = heur.select(td, valid)
        assert not (mask & ~valid).any()
        if t >= burn_in:  # 1500 / (32 * 0.8) ~ 59 batches to fill the window
            shared += (mask & valid).sum(1).numpy()
            total += valid.sum(1).numpy()
    return shared / total


@pytest.mark.parametrize("beta", [0.1, 0.3])
def test_quantile_shares_beta_on_stationary_stream(beta):
    frac = run_stream("quantile", beta, np.random.default_rng(0))
    np.testing.assert_allclose(frac, beta, atol=0.01)


def test_gaussian_shares_theoretical_fraction_on_half_normal_stream():
    beta = 0.1
    # |Z|, Z ~ N(0, s^2): mean s*sqrt(2/pi), std s*sqrt(1 - 2/pi); the threshold scales with s, so the share does not
    mu, sigma = math.sqrt(2 / math.pi), math.sqrt(1 - 2 / math.pi)
    c = NormalDist().inv_cdf(1 - beta)
    expected = 2 * (1 - NormalDist().cdf(mu + c * sigma))  # P(|Z| > mu + c sigma) ~ 0.116
    rng = np.random.default_rng(1)
    heur = make_heuristic("gaussian", 3, beta=beta, window=1500)
    shared = total = 0
    for t in range(400):
        td = torch.as_tensor(np.abs(rng.normal(0.0, [[1.0], [2.0], [0.1]], size=(3, 32))), dtype=torch.float32)
        valid = torch.ones_like(td, dtype=torch.bool)
        mask = heur.select(td, valid)
        if t >= 60:
            shared += mask.sum().item()
            total += valid.sum().item()
    frac = shared / total
    assert abs(frac - expected) < 0.01, (frac, expected)
    assert abs(frac - beta) < 0.03


def numpy_probabilities(td, valid, beta):
    p = np.zeros_like(td, dtype=np.float64)
    for a in range(td.shape[0]):
        x = td[a][valid[a]].astype(np.float64)
        if x.size == 0:
            continue
        q = np.full(x.size, beta) if x.sum() == 0 else np.minimum(1.0, beta * x.size * x / x.sum())
        p[a][valid[a]] = q
    return p


def test_stochastic_probabilities_and_empirical_fraction():
    beta, N = 0.2, 40
    rng = np.random.default_rng(2)
    td = rng.exponential(size=(5, N)).astype(np.float32)
    td[1, 3] = 200.0  # dominates agent 1's sum: clamped at 1
    td[2] = 0.0  # all-zero |TD|: p = beta
    valid = rng.random((5, N)) < 0.7
    valid[3] = False  # no valid entry
    valid[4] = True
    td[0, ~valid[0]] = 1e6  # invalid entries must not enter the sum
    heur = make_heuristic("stochastic", 5, beta=beta, window=1500, generator=torch.Generator().manual_seed(0))
    p = heur.probabilities(torch.as_tensor(td), torch.as_tensor(valid)).double().numpy()
    expected = numpy_probabilities(td, valid, beta)
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-7)
    assert p[1, 3] == 1.0 and np.all(p[2][valid[2]] == pytest.approx(beta))

    draws = 3000
    counts = np.zeros((5, N))
    for _ in range(draws):
        mask = heur.select(torch.as_tensor(td), torch.as_tensor(valid))
        assert not (mask & ~torch.as_tensor(valid)).any()
        counts += mask.numpy()
    freq = counts / draws
    np.testing.assert_allclose(freq, expected, atol=4 * np.sqrt(0.25 / draws))  # per entry, 4 sigma
    n_valid = valid.sum(1)
    has = n_valid > 0
    frac = counts.sum(1)[has] / (draws * n_valid[has])
    np.testing.assert_allclose(frac, expected.sum(1)[has] / n_valid[has], atol=0.005)


@pytest.mark.parametrize("name", HEURISTICS)
def test_invalid_entries_are_never_shared(name):
    rng = np.random.default_rng(3)
    heur = make_heuristic(name, 3, beta=0.5, window=20, generator=torch.Generator().manual_seed(3))
    for _ in range(10):
        td = torch.as_tensor(rng.exponential(size=(3, 16)), dtype=torch.float32)
        valid = torch.as_tensor(rng.random((3, 16)) < 0.5)
        mask = heur.select(td, valid)
        assert mask.dtype == torch.bool and mask.shape == (3, 16)
        assert not (mask & ~valid).any()
        if name == "none":
            assert not mask.any()
        if name == "all":
            assert torch.equal(mask, valid)


def test_quantile_and_gaussian_window_semantics():
    k, beta = 5, 0.3
    c = NormalDist().inv_cdf(1 - beta)
    quant = make_heuristic("quantile", 2, beta=beta, window=k)
    gauss = make_heuristic("gaussian", 2, beta=beta, window=k)
    batches = [
        ([[0.5, 2.0, 1.0], [3.0, 0.1, 0.2]], [[1, 1, 0], [1, 0, 0]]),
        ([[4.0, 0.3, 0.7], [1.5, 2.5, 0.4]], [[1, 1, 1], [0, 0, 0]]),  # agent 1 adds nothing
        ([[0.2, 9.0, 0.6], [0.9, 1.1, 5.0]], [[0, 1, 1], [1, 1, 1]]),
        ([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [0.0] * 7], [[1] * 7, [0, 0, 0, 0, 0, 0, 1]]),  # > k at once
    ]
    history = [[], []]
    for td, valid in batches:
        td, valid = np.array(td, dtype=np.float32), np.array(valid, dtype=bool)
        for a in range(2):
            history[a].extend(td[a][valid[a]].tolist())
        recent = [np.array(h[-k:]) for h in history]  # the current batch is in the window before comparing
        q_ref = np.array([np.quantile(r, 1 - beta) for r in recent])  # numpy default: linear interpolation
        g_ref = np.array([r.mean() + c * r.std() for r in recent])
        q_mask = quant.select(torch.as_tensor(td), torch.as_tensor(valid))
        g_mask = gauss.select(torch.as_tensor(td), torch.as_tensor(valid))
        np.testing.assert_allclose(quant.threshold().numpy(), q_ref, rtol=1e-6)
        np.testing.assert_allclose(gauss.threshold().numpy(), g_ref, rtol=1e-6)
        np.testing.assert_array_equal(q_mask.numpy(), valid & (td > q_ref[:, None]))
        np.testing.assert_array_equal(g_mask.numpy(), valid & (td > g_ref[:, None]))


def test_empty_window_shares_nothing_and_beta_one_shares_everything():
    td = torch.tensor([[1.0, 2.0], [3.0, 3.0]])
    valid = torch.tensor([[False, False], [True, True]])
    for name in ("quantile", "gaussian"):
        mask = make_heuristic(name, 2, beta=0.5, window=10).select(td, valid)
        assert not mask[0].any()  # agent 0 never had a valid value
        full = make_heuristic(name, 2, beta=1.0, window=10).select(td, valid)
        assert torch.equal(full, valid)


@pytest.mark.parametrize("name", HEURISTICS)
def test_state_dict_round_trip(name):
    rng = np.random.default_rng(4)
    stream = list(td_stream(rng, 12, n_agents=4, batch=16))
    heur = make_heuristic(name, 4, beta=0.2, window=50, generator=torch.Generator().manual_seed(0))
    for td, valid in stream[:8]:
        heur.select(td, valid)
    buffer = io.BytesIO()
    torch.save(heur.state_dict(), buffer)
    buffer.seek(0)
    other = make_heuristic(name, 4, beta=0.2, window=50, generator=torch.Generator().manual_seed(0))
    other.load_state_dict(torch.load(buffer, weights_only=True))
    heur.generator.manual_seed(1)
    other.generator.manual_seed(1)
    for td, valid in stream[8:]:
        assert torch.equal(heur.select(td, valid), other.select(td, valid))
    if name in ("quantile", "gaussian"):
        assert torch.equal(heur.threshold(), other.threshold())
        fresh = make_heuristic(name, 4, beta=0.2, window=50)
        assert not torch.equal(fresh.window.nan_to_num(-1), heur.window.nan_to_num(-1))  # the state is not trivial


def test_shared_fraction():
    mask = torch.tensor([[True, False, True, True], [False, False, False, False], [True, True, False, False]])
    valid = torch.tensor([[True, True, True, False], [False, False, False, False], [True, True, True, True]])
    frac = shared_fraction(mask, valid)
    assert frac.dtype == torch.float32
    np.testing.assert_allclose(frac.numpy(), [2 / 3, 0.0, 0.5])


def test_make_heuristic_validates_arguments():
    with pytest.raises(ValueError):
        make_heuristic("best", 2, beta=0.1, window=10)
    for beta in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            make_heuristic("quantile", 2, beta=beta, window=10)
    with pytest.raises(ValueError):
        make_heuristic("gaussian", 2, beta=0.1, window=0)
    assert make_heuristic("gaussian", 2, beta=0.1, window=10).c == pytest.approx(1.2815515655446008)
