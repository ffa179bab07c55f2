"""algo=mcmc, the Ising model's physics reference: the sampled mean |m| and energy per spin against the exact
Boltzmann averages of tiny lattices enumerated state by state, the colouring behind the checkerboard sweep, the
synchronous update's failure, the compatibility refusal, the config, and an exact resume."""

import itertools
import math

import numpy as np
import pytest
import torch

from conftest import SMALL_PURSUIT
from marlrun.algos.mcmc import MCMC, MCMCConfig, colour_classes
from marlrun.checkpoint import checkpoint_paths, load_checkpoint
from marlrun.config import validate
from marlrun.envs.base import EnvSpec
from marlrun.envs.ising import IsingConfig, IsingVecEnv, ising_spec, lattice_neighbours
from marlrun.errors import UserError
from marlrun.metrics import read_metrics
from marlrun.registry import check_compatible
from marlrun.runner import train

TAU_C = 1 / math.log(1 + math.sqrt(2))  # Onsager's T_c = 2.269 J/k at T = 2 tau


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread is fastest, and the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bonds(dims, L, k):
    """Every bond once, from coordinates (not from the env's neighbour lists): right/down, and both down diagonals."""
    if dims == 1:
        return [(x, (x + 1) % L) for x in range(L)]
    forward = [(1, 0), (0, 1)] + ([(1, 1), (1, -1)] if k == 8 else [])
    return [(x * L + y, ((x + dx) % L) * L + (y + dy) % L) for x in range(L) for y in range(L) for dx, dy in forward]


def exact(dims, L, k, T, J=1.0, h=0.0):
    """Exact <|m|>, <m> and <E>/N at temperature T of the Boltzmann distribution exp(-E/T), by enumerating all 2^N
    states, E = -J sum_bonds s_i s_j - h sum_i s_i."""
    N = L**dims
    s = 1 - 2 * ((np.arange(2**N)[:, None] >> np.arange(N)) & 1).astype(np.float64)  # [2^N, N]
    i, j = np.array(bonds(dims, L, k)).T
    energy = -J * (s[:, i] * s[:, j]).sum(1) - h * s.sum(1)
    w = np.exp(-(energy - energy.min()) / T)
    w /= w.sum()
    m = s.mean(1)
    return float(w @ np.abs(m)), float(w @ m), float(w @ energy) / N


def sample(dims, L, k, tau, J=1.0, h=0.0, lattices=512, steps=300, burn_in=50, **algo):
    """Means over independent lattices of each lattice's time average of |m|, m and E/N, with their standard errors."""
    env = IsingVecEnv(IsingConfig(dims=dims, L=L, neighbours=k, J=J, h=h, max_cycles=10**6), lattices, 3)
    mcmc = MCMC(MCMCConfig(temperature=tau, **algo), env.spec, lattices, torch.device("cpu"), 7)
    i, j = torch.tensor(bonds(dims, L, k)).T
    obs = env.reset()
    totals = torch.zeros(3, lattices, dtype=torch.float64)
    for t in range(steps):
        obs = env.step(mcmc.act(obs, t, context=env.context())).obs
        if t >= burn_in:
            s = env.spins().double()
            m = s.mean(1)
            e = (-J * (s[:, i] * s[:, j]).sum(1) - h * s.sum(1)) / s.shape[1]
            totals += torch.stack([m.abs(), m, e])
    per_lattice = totals / (steps - burn_in)
    return per_lattice.mean(1).tolist(), (per_lattice.std(1) / math.sqrt(lattices)).tolist()


CASES = [  # dims, L, k, tau, h, algo keys
    (2, 4, 4, 0.8, 0.0, {}),
    (2, 4, 4, TAU_C, 0.0, {}),
    (2, 4, 4, 1.6, 0.0, {}),
    (2, 4, 4, 3.0, 0.0, {}),
    (2, 4, 4, 1.0, 0.0, {"rule": "metropolis"}),
    (2, 4, 4, 2.0, 0.0, {"rule": "metropolis"}),
    (2, 3, 4, 1.0, 0.3, {}),  # an odd torus: 3 colour classes; a field
    (2, 4, 8, 2.0, 0.0, {"rule": "metropolis"}),  # 8 neighbours: 4 classes
    (1, 9, 2, 0.5, -0.2, {"sweeps": 2}),  # an odd ring
]


@pytest.mark.parametrize("dims,L,k,tau,h,algo", CASES)
def test_mcmc_samples_the_exact_boltzmann_distribution(dims, L, k, tau, h, algo):
    """Mean |m|, energy per spin (and m, where a field makes it non-zero) within 4 standard errors of the enumerated
    exp(-E / 2 tau); the same samples are far from the distribution at T = tau (the temperature taken the wrong way:
    the test can fail)."""
    got, se = sample(dims, L, k, tau, h=h, **algo)
    want = exact(dims, L, k, 2 * tau, h=h)
    wrong = exact(dims, L, k, tau, h=h)
    for name, g, s, w in zip(("|m|", "m", "E/N"), got, se, want):
        if name == "m" and h == 0:  # zero by symmetry; a cold lattice keeps its sign for long, so its error is large
            continue
        assert s < 0.015, (name, s)  # precise enough to mean something
        assert abs(g - w) < 4 * s + 1e-3, (name, g, w, s)
    assert abs(got[2] - wrong[2]) > 10 * se[2], (got, wrong)


def test_synchronous_heat_bath_is_not_a_sampler():
    """All spins at once from the old lattice: on a bipartite torus the two sublattices order independently at low
    temperature, often oppositely, so the energy is far above the exact one."""
    got, se = sample(2, 4, 4, 0.6, scan="synchronous", lattices=256, steps=150)
    want = exact(2, 4, 4, 1.2)
    assert want[2] < -1.9 and got[2] > want[2] + 0.5, (got, want)


@pytest.mark.parametrize("dims,L,k,classes", [(2, 4, 4, 2), (2, 6, 4, 2), (2, 3, 4, None), (2, 5, 4, None), (2, 4, 8, 4), (1, 6, 2, 2), (1, 5, 2, 3)])
def test_colour_classes_partition_the_lattice_without_neighbours(dims, L, k, classes):
    """Even lattices get their sublattices; odd ones (no 2-colouring: odd cycles) at least 3 classes."""
    index = lattice_neighbours(dims, L, k)
    found = colour_classes(index)
    assert len(found) == classes if classes else 3 <= len(found) <= k + 1
    assert sorted(torch.cat(found).tolist()) == list(range(L**dims))
    for sites in found:
        members = set(sites.tolist())
        assert not any(j in members for i in members for j in index[i].tolist())
    if (dims, L, k) == (2, 4, 4):  # the checkerboard
        assert [((torch.div(c, L, rounding_mode="floor") + c % L) % 2).unique().tolist() for c in found] == [[0], [1]]


def test_the_sweep_uses_updated_neighbours_and_is_seeded():
    """At a tiny temperature every spin follows its neighbours' current spins: one sweep of a random 6x6 lattice
    lowers the energy (the second sublattice reads the first one's new spins), and the same seed gives the same sweep."""
    env = IsingVecEnv(IsingConfig(L=6, max_cycles=100), 8, 0)
    env.reset()
    context = env.context()
    a = MCMC(MCMCConfig(temperature=1e-3), env.spec, 8, torch.device("cpu"), 1).act(None, 0, context=context)
    b = MCMC(MCMCConfig(temperature=1e-3), env.spec, 8, torch.device("cpu"), 1).act(None, 0, context=context)
    c = MCMC(MCMCConfig(temperature=2.0), env.spec, 8, torch.device("cpu"), 2).act(None, 0, context=context)
    d = MCMC(MCMCConfig(temperature=2.0), env.spec, 8, torch.device("cpu"), 3).act(None, 0, context=context)
    assert torch.equal(a, b) and not torch.equal(c, d)
    env.step(a)
    energy = env.state_metrics()["energy_per_spin"]
    spins = env.spins()
    index = context["neighbours"].index
    field = spins[:, index].sum(-1)
    sublattice = torch.tensor([(x + y) % 2 for x in range(6) for y in range(6)])
    # second sublattice (updated last): every spin agrees with its neighbours' final spins where they are not tied
    second = sublattice == 1
    assert ((spins[:, second] * field[:, second] >= 0)).all()
    assert energy < -0.5


def test_mcmc_refuses_other_environments_in_one_line(compose_cfg, tmp_path):
    other = EnvSpec(name="pursuit", agent_names=("a", "b"), obs_shape=(3,), n_actions=5, teams=("x", "x"))
    with pytest.raises(UserError) as info:
        check_compatible("mcmc", other)
    message = str(info.value)
    assert message.startswith("algo=mcmc needs an Ising lattice energy") and "env=pursuit" in message and "\n" not in message
    with pytest.raises(UserError, match="env.reward=physical"):
        check_compatible("mcmc", ising_spec(IsingConfig(L=4, reward="alignment")))
    check_compatible("mcmc", ising_spec(IsingConfig(L=4)))
    check_compatible("mcmc", ising_spec(IsingConfig(L=4, observation="neighbours")))
    with pytest.raises(UserError, match="algo=mcmc needs"):  # the runner refuses before training
        train(compose_cfg(["algo=mcmc", *SMALL_PURSUIT, "hardware.torch_threads=1", "total_steps=10"]), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_mcmc_config_composes_and_checks_its_keys(compose_cfg):
    cfg = validate(compose_cfg(["algo=mcmc", "env=ising"]))
    assert cfg.algo.name == "mcmc" and (cfg.algo.temperature, cfg.algo.rule, cfg.algo.scan, cfg.algo.sweeps) == (1.0, "heat_bath", "checkerboard", 1)
    cfg = validate(compose_cfg(["experiment=mcmc_ising"]))
    mfq = validate(compose_cfg(["experiment=mfq_ising"]))
    assert cfg.algo.name == "mcmc" and cfg.env == mfq.env  # the same lattice as MF-Q's paper setting
    for key in ("total_steps", "log_interval", "eval_interval", "eval_episodes", "checkpoint_interval", "hardware"):
        assert cfg[key] == mfq[key], key
    for override, key in [("algo.rule=gibbs", "algo.rule"), ("algo.scan=random", "algo.scan"), ("algo.temperature=0", "algo.temperature"),
                          ("algo.sweeps=0", "algo.sweeps")]:
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            validate(compose_cfg(["algo=mcmc", "env=ising", override]))
    with pytest.raises(UserError, match="env.observation"):
        validate(compose_cfg(["algo=mcmc", "env=ising", "env.observation=all"]))


RUN = ["experiment=mcmc_ising", "env.L=6", "env.max_cycles=50", "hardware=cpu", "hardware.torch_threads=1", "log_interval=25",
       "eval_episodes=3", "checkpoint_interval=50", "progress=false", "print_config=false"]


def test_mcmc_runs_logs_like_mfq_and_resumes_exactly(compose_cfg, tmp_path):
    full = train(compose_cfg([*RUN, "total_steps=100"]), tmp_path / "full")
    records = read_metrics(tmp_path / "full")
    assert {"env/xi", "env/energy_per_spin", "train/temperature"} <= set(records[-1])
    assert {"eval/game/xi", "eval/game/energy_per_spin"} <= set(full["evaluations"][-1])
    assert not any(key.startswith(("train/spin/", "train/loss")) for key in records[-1])  # nothing learns

    train(compose_cfg([*RUN, "total_steps=50"]), tmp_path / "split")
    resumed = train(compose_cfg([*RUN, "total_steps=100", f"resume={tmp_path / 'split'}"]), tmp_path / "split")
    assert resumed["env_steps"] == 100
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith(("perf/", "eval/"))} for r in rs]  # noqa: E731
    split, straight = strip(read_metrics(tmp_path / "split")), strip(records)
    assert [r["step"] for r in split] == [r["step"] for r in straight] == [25, 50, 75, 100]
    assert split[:2] == straight[:2]
    # the chain's random numbers continue exactly where they stopped (evaluations do not consume them)
    state = load_checkpoint(checkpoint_paths(tmp_path / "split")[-1])
    assert state["resumes"] == 1
    assert torch.equal(state["algo"]["generator"], load_checkpoint(checkpoint_paths(tmp_path / "full")[-1])["algo"]["generator"])


def test_state_dict_round_trip_continues_the_same_chain():
    env = IsingVecEnv(IsingConfig(L=4, max_cycles=1000), 4, 0)
    env.reset()
    a = MCMC(MCMCConfig(temperature=1.2), env.spec, 4, torch.device("cpu"), 5)
    for t in range(5):
        env.step(a.act(None, t, context=env.context()))
    saved, context = a.state_dict(), env.context()
    b = MCMC(MCMCConfig(temperature=1.2), env.spec, 4, torch.device("cpu"), 99)
    b.load_state_dict(saved)
    assert a.update(5) == {} and a.observe(None, None, None) == {}
    assert all(torch.equal(a.act(None, 5 + t, context=context), b.act(None, 5 + t, context=context)) for t in range(3))


def test_exact_enumeration_limits():
    """The enumeration itself: all up and all down are the ground states (E/N = -2 at T -> 0), |m| -> 1/2-ish noise
    at infinite temperature (mean |sum of 16 random signs| / 16)."""
    cold, hot = exact(2, 4, 4, 0.05), exact(2, 4, 4, 1e6)
    assert cold[0] == pytest.approx(1.0) and cold[2] == pytest.approx(-2.0)
    random_abs_m = sum(math.comb(16, n) * abs(2 * n - 16) for n in range(17)) / 2**16 / 16
    assert hot[0] == pytest.approx(random_abs_m, rel=1e-4) and hot[2] == pytest.approx(0.0, abs=1e-4)
    assert list(itertools.islice(bonds(2, 4, 4), 2)) == [(0, 4), (0, 1)]


def test_the_mcmc_against_mfq_script_runs_end_to_end(tmp_path):
    """scripts/mcmc_vs_mfq_ising.sh shrunk to 2 temperatures, one 6x6 lattice, one seed, 60 steps: three sweeps, the Q
    differences of the MF-Q runs, three reports and the xi-against-tau table."""
    import csv
    import os

    from test_scripts import SCRIPTS, run_script

    script = SCRIPTS[[s.name for s in SCRIPTS].index("mcmc_vs_mfq_ising.sh")]
    os.environ.update(TEMPS="0.8,2.4", SIZES="6", SYNC_SIZES="6", SEEDS="0", STEPS="60")
    try:
        result = run_script(script, str(tmp_path / "out"), "log_interval=30", "eval_episodes=4", cwd=tmp_path)
    finally:
        for key in ("TEMPS", "SIZES", "SYNC_SIZES", "SEEDS", "STEPS"):
            os.environ.pop(key)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("2 of 2 jobs finished") == 3
    with open(tmp_path / "out" / "xi_vs_tau.csv") as f:
        rows = list(csv.DictReader(f))
    xi = {(r["sweep"], float(r["tau"])): float(r["mean"]) for r in rows if r["metric"] == "eval/game/xi"}
    assert set(xi) == {(s, t) for s in ("mcmc", "mcmc_synchronous", "mfq") for t in (0.8, 2.4)}
    assert xi[("mcmc", 0.8)] > xi[("mcmc", 2.4)]
    with open(tmp_path / "out" / "mfq" / "q_differences.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert (tmp_path / "out" / "xi_vs_tau.png").exists() and (tmp_path / "out" / "mcmc" / "report" / "runs.csv").exists()
