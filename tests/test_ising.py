"""The torch Ising environment: lattice indices, rewards and energies on hand-made lattices, step semantics,
seeding, and the PettingZoo ParallelEnv view of the same core."""

import math
import warnings

import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test

from marlrun.envs.base import IndexNeighbours
from marlrun.envs.ising import IsingConfig, IsingParallelEnv, IsingVecEnv, lattice_neighbours, make_ising
from marlrun.errors import UserError

ALIGN = math.tanh(1.25)  # 0.8483: tanh(5 * (0.75 - 0.5))


def brute_neighbours(dims, L, k):
    """Neighbour lists by walking coordinates, in the documented order."""
    if dims == 1:
        return [[(x - 1) % L, (x + 1) % L] for x in range(L)]
    offsets = [(-1, 0), (1, 0), (0, -1), (0, 1)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if k == 8 else [])
    return [[((x + dx) % L) * L + (y + dy) % L for dx, dy in offsets] for x in range(L) for y in range(L)]


def brute_energy(spins, dims, L, k, J=1.0, h=0.0):
    """E / N of one lattice (list of +-1), summing every bond once: right/down (+ both down diagonals for k=8)."""
    N = len(spins)
    if dims == 1:
        bonds = [(x, (x + 1) % L) for x in range(L)]
    else:
        forward = [(1, 0), (0, 1)] + ([(1, 1), (1, -1)] if k == 8 else [])
        bonds = [(x * L + y, ((x + dx) % L) * L + (y + dy) % L) for x in range(L) for y in range(L) for dx, dy in forward]
    assert len(bonds) == N * k // 2
    return (-J * sum(spins[i] * spins[j] for i, j in bonds) - h * sum(spins)) / N


def set_lattice(env, up):
    """Step ``env`` (already reset) so that its spins are ``up`` [E, N] (1 up, 0 down)."""
    return env.step(torch.as_tensor(up, dtype=torch.long).reshape(env.num_envs, env.n_agents))


# ------------------------------------------------------------------------------------------------ the lattice

@pytest.mark.parametrize("dims,L,k", [(1, 3, 2), (1, 7, 2), (2, 3, 4), (2, 3, 8), (2, 4, 4), (2, 5, 8), (2, 6, 4)])
def test_lattice_neighbours_match_coordinates(dims, L, k):
    index = lattice_neighbours(dims, L, k)
    assert index.dtype == torch.long and tuple(index.shape) == (L**dims, k)
    assert index.tolist() == brute_neighbours(dims, L, k)
    for i, row in enumerate(index.tolist()):  # k distinct sites, never the site itself (L = 3 included)
        assert len(set(row)) == k and i not in row
    # symmetric: j is a neighbour of i exactly as often as i is of j
    pairs = {(i, j) for i, row in enumerate(index.tolist()) for j in row}
    assert all((j, i) in pairs for i, j in pairs)


@pytest.mark.parametrize("k", [4, 8])
def test_index_neighbours_mean_matches_loop(k):
    L, E = 4, 3
    index = lattice_neighbours(2, L, k)
    g = torch.Generator().manual_seed(1)
    actions = torch.randint(-1, 2, (E, L * L), generator=g)  # -1: no action, excluded from the mean
    actions[0, index[5]] = -1  # a site whose neighbours all lack an action: a row of zeros
    mean = IndexNeighbours(index).mean(actions, 2)
    for e in range(E):
        for i in range(L * L):
            acted = [int(actions[e, j]) for j in index[i].tolist() if actions[e, j] >= 0]
            want = [acted.count(0) / len(acted), acted.count(1) / len(acted)] if acted else [0.0, 0.0]
            assert mean[e, i].tolist() == pytest.approx(want)
    assert mean[0, 5].tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------------------------------ rewards, energy

def test_all_up_and_checkerboard_2d():
    L = 6
    env = IsingVecEnv(IsingConfig(L=L, neighbours=4, J=1.0, h=0.0), 2, 0)
    env.reset()
    x, y = np.divmod(np.arange(L * L), L)
    step = set_lattice(env, np.stack([np.ones(L * L), (x + y) % 2]))
    assert step.reward[0].tolist() == [2.0] * (L * L)
    assert step.reward[1].tolist() == [-2.0] * (L * L)
    assert env.state_metrics() == {"xi": pytest.approx(0.5), "energy_per_spin": pytest.approx(0.0)}
    metrics = env.episode_metrics(step.next_obs)
    assert metrics["game/xi"].tolist() == [1.0, 0.0]
    assert metrics["game/energy_per_spin"].tolist() == [-2.0, 2.0]


def test_field_and_1d_and_eight_neighbours():
    env = IsingVecEnv(IsingConfig(L=4, neighbours=4, h=0.5), 1, 0)
    env.reset()
    step = set_lattice(env, torch.ones(1, 16))
    assert step.reward[0].tolist() == [2.5] * 16
    assert env.state_metrics()["energy_per_spin"] == pytest.approx(-2.5)

    ring = IsingVecEnv(IsingConfig(dims=1, L=5, neighbours=2), 1, 0)
    ring.reset()
    step = set_lattice(ring, torch.ones(1, 5))
    assert step.reward[0].tolist() == [1.0] * 5
    assert ring.state_metrics() == {"xi": 1.0, "energy_per_spin": -1.0}

    eight = IsingVecEnv(IsingConfig(L=3, neighbours=8, J=0.5), 1, 0)
    eight.reset()
    step = set_lattice(eight, torch.zeros(1, 9))  # all down: same bonds energy, xi 1
    assert step.reward[0].tolist() == [2.0] * 9
    assert eight.state_metrics() == {"xi": 1.0, "energy_per_spin": -2.0}


@pytest.mark.parametrize("dims,L,k,J,h", [(1, 7, 2, 1.0, 0.0), (2, 5, 4, 0.7, -0.3), (2, 4, 8, 1.3, 0.2), (2, 3, 8, 1.0, 0.0)])
def test_physical_reward_and_energy_match_brute_force(dims, L, k, J, h):
    env = IsingVecEnv(IsingConfig(dims=dims, L=L, neighbours=k, J=J, h=h), 3, 4)
    env.reset()
    up = torch.randint(0, 2, (3, L**dims), generator=torch.Generator().manual_seed(2))
    step = set_lattice(env, up)
    nbrs = brute_neighbours(dims, L, k)
    metrics = env.episode_metrics(step.next_obs)
    for e in range(3):
        s = [2 * int(a) - 1 for a in up[e]]
        want = [0.5 * J * s[i] * sum(s[j] for j in nbrs[i]) + h * s[i] for i in range(len(s))]
        assert step.reward[e].tolist() == pytest.approx(want, abs=1e-6)
        energy = brute_energy(s, dims, L, k, J, h)
        assert metrics["game/energy_per_spin"][e].item() == pytest.approx(energy, abs=1e-6)
        assert energy == pytest.approx(-sum(want) / len(s), abs=1e-9)
        assert metrics["game/xi"][e].item() == pytest.approx(abs(sum(s)) / len(s))


def test_alignment_reward():
    L = 4
    index = lattice_neighbours(2, L, 4)
    up = torch.ones(2, L * L, dtype=torch.long)
    up[:, index[0, 2]] = 0  # site 0's neighbours: one down, three up
    up[1, 0] = 0  # in copy 1 site 0 itself is down
    env = IsingVecEnv(IsingConfig(L=L, neighbours=4, reward="alignment"), 2, 0)
    env.reset()
    step = set_lattice(env, up)
    assert step.reward[0, 0].item() == pytest.approx(ALIGN, abs=1e-6)
    assert step.reward[1, 0].item() == pytest.approx(-ALIGN, abs=1e-6)
    assert ALIGN == pytest.approx(0.8483, abs=1e-4)

    # on a random lattice: tanh(5 * (onehot(a) . neighbourhood mean one-hot - 1/2)), as the mean-field paper writes it
    big = IsingVecEnv(IsingConfig(L=5, neighbours=8, reward="alignment"), 2, 0)
    big.reset()
    actions = torch.randint(0, 2, (2, 25), generator=torch.Generator().manual_seed(3))
    step = big.step(actions)
    abar = big.context()["neighbours"].mean(actions, 2)
    want = torch.tanh(5 * ((torch.nn.functional.one_hot(actions, 2) * abar).sum(-1) - 0.5))
    torch.testing.assert_close(step.reward, want)


# ------------------------------------------------------------------------------------------------ stepping

def test_step_semantics_and_truncation():
    E, L, M = 3, 5, 4
    env = make_ising(IsingConfig(L=L, neighbours=8, max_cycles=M), E, 7, seed=11)  # num_workers is ignored
    assert isinstance(env, IsingVecEnv) and env.n_agents == L * L and env.num_envs == E
    spec = env.spec
    assert spec.obs_shape == (9,) and spec.n_actions == 2 and spec.agent_names[3] == "spin_3"
    assert spec.teams == ("spin",) * 25 and "neighbours" in spec.capabilities and spec.obs_storage_dtype == torch.int8
    nbrs = brute_neighbours(2, L, 8)
    g = torch.Generator().manual_seed(5)
    obs = env.reset()
    assert obs.dtype == torch.float32 and tuple(obs.shape) == (E, L * L, 9)
    assert torch.equal(env.context()["prev_actions"], (obs[..., 0] > 0).long())
    for t in range(1, 2 * M + 1):
        actions = torch.randint(0, 2, (E, L * L), generator=g)
        step = env.step(actions)
        spins = actions * 2 - 1
        want = torch.stack([torch.stack([spins[:, i]] + [spins[:, j] for j in nbrs[i]], 1) for i in range(L * L)], 1)
        assert torch.equal(step.next_obs, want.float())  # the lattice is the joint action
        assert torch.equal(step.obs.to(torch.int8).float(), step.obs)  # int8 storage is lossless
        assert not step.terminated.any() and step.alive.all()
        assert step.reward.dtype == torch.float32 and tuple(step.reward.shape) == (E, L * L)
        ended = t % M == 0
        assert step.episode_end.tolist() == [ended] * E
        assert step.truncated.tolist() == [[ended] * (L * L)] * E
        if ended:  # reset automatically: obs is a fresh random lattice, next_obs the final one
            assert not torch.equal(step.obs, step.next_obs)
            assert torch.equal(env.context()["prev_actions"], (step.obs[..., 0] > 0).long())
            s = spins.tolist()
            for e in range(E):
                assert step.episode_info["game/xi"][e].item() == pytest.approx(abs(sum(s[e])) / (L * L))
                assert step.episode_info["game/energy_per_spin"][e].item() == pytest.approx(brute_energy(s[e], 2, L, 8))
        else:
            assert torch.equal(step.obs, step.next_obs) and step.episode_info == {}
            assert torch.equal(env.context()["prev_actions"], actions)
    env.close()


def test_seeding():
    def run(seed, steps=5):
        env = IsingVecEnv(IsingConfig(L=8, max_cycles=2), 4, seed)
        out = [env.reset()]
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            step = env.step(torch.randint(0, 2, (4, 64), generator=g))
            out += [step.obs, step.reward]
        return out

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[3], c[3])  # a[3]: obs after the automatic reset of step 2
    assert torch.equal(a[1], c[1])  # before it, the lattice is the (same) joint action
    first = a[0]
    assert all(not torch.equal(first[0], first[e]) for e in range(1, 4))  # copies start from different lattices
    assert 0.3 < (first[..., 0] > 0).float().mean().item() < 0.7
    env = IsingVecEnv(IsingConfig(L=8), 4, 1)
    assert torch.equal(env.reset(), first) and torch.equal(env.reset(), first)  # reset() restarts the seeded episodes


@pytest.mark.parametrize("kwargs, key", [
    ({"L": 2}, "env.L"), ({"dims": 3}, "env.dims"), ({"dims": 1, "neighbours": 4}, "env.neighbours"),
    ({"dims": 2, "neighbours": 6}, "env.neighbours"), ({"reward": "energy"}, "env.reward"), ({"max_cycles": 0}, "env.max_cycles"),
])
def test_invalid_arguments(kwargs, key):
    with pytest.raises(UserError, match=f"^{key}: "):
        IsingConfig(**kwargs)
    with pytest.raises(UserError, match=f"^{key}: "):
        IsingParallelEnv(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    cpu = IsingVecEnv(IsingConfig(L=6, neighbours=8, reward="alignment", max_cycles=3), 2, 0)
    gpu = IsingVecEnv(IsingConfig(L=6, neighbours=8, reward="alignment", max_cycles=3), 2, 0, "cuda")
    obs = gpu.reset()
    cpu.reset()
    assert obs.device.type == "cuda" and gpu.context()["neighbours"].index.device.type == "cuda"
    for _ in range(3):
        actions = torch.randint(0, 2, (2, 36))
        a, b = cpu.step(actions), gpu.step(actions.cuda())
        torch.testing.assert_close(b.next_obs.cpu(), a.next_obs)
        torch.testing.assert_close(b.reward.cpu(), a.reward)
        assert b.episode_end.device.type == "cuda" and b.truncated.device.type == "cuda"
    assert b.episode_end.all()
    torch.testing.assert_close(b.episode_info["game/energy_per_spin"].cpu(), a.episode_info["game/energy_per_spin"])


# ------------------------------------------------------------------------------------------------ the ParallelEnv

def test_parallel_api():
    env = IsingParallelEnv(L=3, neighbours=8, max_cycles=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # parallel_api_test reports agent bookkeeping problems as warnings
        parallel_api_test(env, num_cycles=7)
    ring = IsingParallelEnv(dims=1, L=6, neighbours=2, reward="alignment")
    parallel_api_test(ring, num_cycles=4)


def test_parallel_env_matches_vector_env():
    env = IsingParallelEnv(L=4, neighbours=4, h=0.25, max_cycles=3)
    assert env.observation_space("spin_0").shape == (5,) and env.action_space("spin_2").n == 2
    obs, infos = env.reset(seed=9)
    vec = IsingVecEnv(IsingConfig(L=4, neighbours=4, h=0.25, max_cycles=3), 1, 9)
    vec_obs = vec.reset()
    assert set(obs) == set(infos) == {f"spin_{i}" for i in range(16)}
    assert np.array_equal(np.stack([obs[f"spin_{i}"] for i in range(16)]), vec_obs[0].numpy())
    g = torch.Generator().manual_seed(4)
    for t in range(3):
        actions = torch.randint(0, 2, (1, 16), generator=g)
        obs, rewards, terms, truncs, infos = env.step({f"spin_{i}": int(a) for i, a in enumerate(actions[0])})
        step = vec.step(actions)
        assert np.array_equal(np.stack([obs[f"spin_{i}"] for i in range(16)]), step.next_obs[0].numpy())
        assert [rewards[f"spin_{i}"] for i in range(16)] == step.reward[0].tolist()
        assert all(isinstance(r, float) for r in rewards.values()) and not any(terms.values())
        assert all(v == (t == 2) for v in truncs.values())
    assert env.agents == []
    obs2, _ = env.reset(seed=9)
    assert np.array_equal(obs2["spin_5"], vec_obs[0, 5].numpy())  # re-seeding restarts


def test_render():
    env = IsingParallelEnv(L=4, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    image = env.render()
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] == image.shape[1] and image.shape[0] >= 4 * 4 and image.shape[0] % 4 == 0
    scale = image.shape[0] // 4
    for i in range(16):  # up = white, down = black
        x, y = divmod(i, 4)
        block = image[x * scale : (x + 1) * scale, y * scale : (y + 1) * scale]
        assert (block == (255 if obs[f"spin_{i}"][0] > 0 else 0)).all()
    ring = IsingParallelEnv(dims=1, L=5, neighbours=2, render_mode="rgb_array")
    ring.reset(seed=0)
    strip = ring.render()
    assert strip.dtype == np.uint8 and strip.shape[1] == 5 * strip.shape[0] and strip.shape[2] == 3


def test_neighbours_observation_hides_the_own_spin_only():
    """observation="neighbours" (the MF-Q paper's Ising code): the same lattice, rewards and metrics; agents see the k
    neighbour spins without their own."""
    full = IsingVecEnv(IsingConfig(L=5, max_cycles=3), 2, 3)
    part = IsingVecEnv(IsingConfig(L=5, max_cycles=3, observation="neighbours"), 2, 3)
    assert part.spec.obs_shape == (4,) and full.spec.obs_shape == (5,)
    assert "ising_energy" in part.spec.capabilities and "ising_energy" not in IsingVecEnv(IsingConfig(L=4, reward="alignment"), 1, 0).spec.capabilities
    obs_full, obs_part = full.reset(), part.reset()
    assert torch.equal(obs_part, obs_full[..., 1:])
    g = torch.Generator().manual_seed(6)
    for _ in range(4):  # across an automatic reset
        actions = torch.randint(0, 2, (2, 25), generator=g)
        a, b = full.step(actions), part.step(actions)
        assert torch.equal(b.obs, a.obs[..., 1:]) and torch.equal(b.next_obs, a.next_obs[..., 1:])
        assert torch.equal(b.reward, a.reward) and b.episode_info.keys() == a.episode_info.keys()
        for key in a.episode_info:
            assert torch.equal(a.episode_info[key], b.episode_info[key])
    assert full.state_metrics() == part.state_metrics()
    assert part.context()["coupling"] == 1.0 and part.context()["field"] == 0.0
    with pytest.raises(UserError, match="env.observation: unknown observation 'own'"):
        IsingConfig(observation="own")
    env = IsingParallelEnv(L=3, observation="neighbours", render_mode="rgb_array", max_cycles=4)
    assert env.observation_space("spin_0").shape == (4,)
    parallel_api_test(env, num_cycles=5)
    obs, _ = env.reset(seed=1)
    image = env.render()  # drawn from the spins, not from the observation
    scale = image.shape[0] // 3
    spins = env.core.spins()[0]
    assert all((image[(i // 3) * scale, (i % 3) * scale] == (255 if spins[i] > 0 else 0)).all() for i in range(9))
