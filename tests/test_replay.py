"""AgentReplay against plain-Python / numpy reference models."""

import io

import numpy as np
import pytest
import torch

from marlrun.algos.super_ddqn import SuperDDQNConfig
from marlrun.replay import AgentReplay


def per_replay(*args, **kwargs) -> AgentReplay:
    """An AgentReplay with SUPER-DDQN's prioritized-replay settings unless the test gives its own."""
    cfg = SuperDDQNConfig()
    per = dict(prioritized=cfg.prioritized, alpha=cfg.per_alpha, beta=cfg.per_beta, eps=cfg.per_eps)
    return AgentReplay(*args, **{**per, **kwargs})


def make_rows(ids, agent):
    """Transitions whose every field encodes a unique id, so we can check they arrive intact."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    f = ids.to(torch.float32)
    return dict(
        agent=torch.as_tensor(agent, dtype=torch.int64),
        obs=torch.stack([f, -f], dim=1),
        action=ids,
        reward=0.5 * f,
        next_obs=torch.stack([f + 1000, f - 1000], dim=1),
        terminated=(ids % 2 == 1),  # bool on purpose: stored as float32
    )


class RingReference:
    """One Python list per agent, written one transition at a time."""

    def __init__(self, n_agents, capacity):
        self.capacity = capacity
        self.slots = [[None] * capacity for _ in range(n_agents)]
        self.ptr = [0] * n_agents
        self.size = [0] * n_agents

    def add(self, ids, agent):
        for i, a in zip(ids, agent):
            self.slots[a][self.ptr[a]] = i
            self.ptr[a] = (self.ptr[a] + 1) % self.capacity
            self.size[a] = min(self.size[a] + 1, self.capacity)


def check_against_reference(buf, ref):
    assert buf.size.tolist() == ref.size
    assert buf.ptr.tolist() == ref.ptr
    for a, slots in enumerate(ref.slots):
        for pos, i in enumerate(slots):
            if i is None:
                continue
            assert buf.obs[a, pos].tolist() == [i, -i]
            assert buf.action[a, pos].item() == i
            assert buf.reward[a, pos].item() == 0.5 * i
            assert buf.next_obs[a, pos].tolist() == [i + 1000, i - 1000]
            assert buf.terminated[a, pos].item() == float(i % 2)


@pytest.mark.parametrize("prioritized", [False, True])
def test_ring_semantics_match_reference(prioritized):
    rng = np.random.default_rng(0)
    A, C = 4, 5
    buf = per_replay(A, C, (2,), torch.float32, prioritized=prioritized)
    ref = RingReference(A, C)
    next_id = 0
    # first call: agent 0 gets far more than capacity, agent 1 a few, agent 2 none, agent 3 one; interleaved
    first = [0] * 12 + [1] * 2 + [3]
    rounds = [rng.permutation(first).tolist()]
    # then random uneven calls, including agents repeated many times and empty calls
    for n in [0, 3, 7, 20, 1, 9]:
        rounds.append(rng.choice(A, size=n, p=[0.55, 0.05, 0.3, 0.1]).tolist())
    for agent in rounds:
        ids = list(range(next_id, next_id + len(agent)))
        next_id += len(agent)
        buf.add(**make_rows(ids, agent))
        ref.add(ids, agent)
        check_against_reference(buf, ref)
    if prioritized:  # every stored transition has a leaf (default priority 1.0), padding/empty leaves stay 0
        leaves = buf.priorities
        for a in range(A):
            assert torch.all(leaves[a, : ref.size[a]] == 1.0)
            assert torch.all(leaves[a, ref.size[a]:] == 0.0)


@pytest.mark.parametrize("prioritized", [False, True])
def test_sampled_transitions_are_intact_and_in_the_right_agent(prioritized):
    rng = np.random.default_rng(1)
    A, C = 3, 16
    buf = per_replay(A, C, (2,), torch.float32, prioritized=prioritized, generator=torch.Generator().manual_seed(0))
    ref = RingReference(A, C)
    agent = rng.choice(A, size=40).tolist()
    ids = list(range(len(agent)))
    buf.add(**make_rows(ids, agent))
    ref.add(ids, agent)
    batch = buf.sample(64)
    for key in ("obs", "next_obs"):
        assert batch[key].shape == (A, 64, 2)
    for key in ("action", "reward", "terminated", "index", "weight"):
        assert batch[key].shape == (A, 64)
    for a in range(A):
        for b in range(64):
            i = int(batch["action"][a, b])
            assert ref.slots[a][int(batch["index"][a, b])] == i  # the index points at the sampled transition
            assert batch["obs"][a, b].tolist() == [i, -i]
            assert batch["reward"][a, b].item() == 0.5 * i
            assert batch["next_obs"][a, b].tolist() == [i + 1000, i - 1000]
            assert batch["terminated"][a, b].item() == float(i % 2)


def test_uniform_never_samples_beyond_size():
    A, C = 3, 10
    buf = per_replay(A, C, (1,), torch.float32, prioritized=False, generator=torch.Generator().manual_seed(3))
    buf.add(**{k: v[:, :1] if k in ("obs", "next_obs") else v
               for k, v in make_rows(range(1 + 3 + 7), [0] + [1] * 3 + [2] * 7).items()})
    size = torch.tensor([1, 3, 7])
    seen = [set() for _ in range(A)]
    for _ in range(50):
        batch = buf.sample(128)
        assert torch.all(batch["index"] >= 0) and torch.all(batch["index"] < size[:, None])
        assert torch.all(batch["weight"] == 1.0)
        for a in range(A):
            seen[a] |= set(batch["index"][a].tolist())
    assert seen == [set(range(n)) for n in size.tolist()]  # ... and does reach every stored transition


def fill(buf, counts):
    agent = sum(([a] * n for a, n in enumerate(counts)), [])
    buf.add(**make_rows(range(len(agent)), agent))


def test_prioritized_sampling_frequencies_are_proportional():
    A, C, B, rounds = 2, 6, 200, 150  # C = 6 -> 8 leaves, two of them padding
    buf = per_replay(A, C, (2,), torch.float32, generator=torch.Generator().manual_seed(4))
    fill(buf, [6, 4])  # agent 1 is not full: leaves 4, 5 are empty
    td = np.array([[1.0, 2.0, 3.0, 0.5, 8.0, 0.25], [5.0, 0.1, 1.0, 0.0, 7.0, 2.0]])
    index = np.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 3, 3]])  # agent 1: index 3 three times, 2.0 wins
    buf.update_priorities(torch.as_tensor(index), torch.as_tensor(td, dtype=torch.float32))
    prio = np.zeros((A, C))
    for a in range(A):
        for b in range(C):
            prio[a, index[a, b]] = (np.float32(td[a, b]) + buf.eps) ** buf.alpha
    counts = np.zeros((A, C))
    for _ in range(rounds):
        idx = buf.sample(B)["index"].numpy()
        for a in range(A):
            counts[a] += np.bincount(idx[a], minlength=C)
    n = B * rounds
    for a, size in enumerate([6, 4]):
        assert counts[a, size:].sum() == 0
        expected = n * prio[a, :size] / prio[a, :size].sum()
        chi2 = ((counts[a, :size] - expected) ** 2 / expected).sum()
        assert chi2 < 25.0, (chi2, counts[a], expected)  # df <= 5: p ~ 1e-4 at 25; stratification lowers it further


def test_priority_sums_match_numpy_after_random_updates_with_duplicates():
    rng = np.random.default_rng(5)
    A, C, B = 3, 13, 20  # blocks of 4 leaves, 16 in all
    buf = per_replay(A, C, (2,), torch.float32, alpha=0.7, generator=torch.Generator().manual_seed(5))
    fill(buf, [13, 13, 9])
    sizes = np.array([13, 13, 9])
    leaves = np.zeros((A, buf.n_blocks * buf.block_size))
    leaves[0, :13] = leaves[1, :13] = leaves[2, :9] = 1.0
    running_max = [1.0] * A
    for _ in range(60):
        index = np.stack([rng.integers(0, s, size=B) for s in sizes])  # plenty of duplicates
        td = rng.exponential(size=(A, B)) * rng.choice([1e-3, 1.0, 1e3], size=(A, B))
        buf.update_priorities(torch.as_tensor(index), torch.as_tensor(td))
        for a in range(A):
            for b in range(B):  # last write wins
                leaves[a, index[a, b]] = (td[a, b] + buf.eps) ** buf.alpha
            running_max[a] = max(running_max[a], leaves[a, index[a]].max())  # over the values that won
    assert (buf.block_size, buf.n_blocks) == (4, 4)
    np.testing.assert_allclose(buf.priorities.numpy(), leaves, rtol=1e-12)
    np.testing.assert_allclose(buf.block_sums.numpy(), leaves.reshape(A, 4, 4).sum(axis=2), rtol=1e-12)
    np.testing.assert_allclose(buf.max_priority.numpy(), running_max, rtol=1e-12)
    assert torch.all(buf.sample(256)["index"] < torch.as_tensor(sizes)[:, None])


def test_importance_weights_match_formula():
    A, C, B = 2, 7, 50
    buf = per_replay(A, C, (2,), torch.float32, beta=0.4, generator=torch.Generator().manual_seed(6))
    fill(buf, [7, 3])
    td = torch.tensor([[0.1, 2.0, 0.5, 3.0, 0.0, 1.0, 7.0], [0.3, 4.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    buf.update_priorities(torch.tensor([[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 0, 1, 2, 2]]), td)
    # row 1 repeats indices 0..2: last write wins -> priorities of td 0.0, 0.0, 0.0
    prio = (td.double().numpy() + buf.eps) ** buf.alpha
    prio[1, :3] = (0.0 + buf.eps) ** buf.alpha
    prio[1, 3:] = 0.0
    batch = buf.sample(B)
    for a, n in enumerate([7, 3]):
        idx = batch["index"][a].numpy()
        P = prio[a, idx] / prio[a, :n].sum()
        w = (n * P) ** -buf.beta
        np.testing.assert_allclose(batch["weight"][a].numpy(), w / w.max(), rtol=1e-5)
    assert batch["weight"].dtype == torch.float32


def test_new_transitions_get_running_max_priority():
    A, C = 3, 8
    buf = per_replay(A, C, (2,), torch.float32)
    P = buf.priorities
    rows = make_rows([0, 1, 2], [0, 0, 1])
    buf.add(**rows, priority=torch.tensor([0.5, 3.0, 0.2]))  # explicit priorities are raised into the max too
    buf.add(**make_rows([3, 4, 5], [0, 1, 2]))  # None: agent 0 -> 3.0, agent 1 -> 0.2, agent 2 (empty) -> 1.0
    assert P[0, 2].item() == 3.0
    assert P[1, 1].item() == pytest.approx(0.2)
    assert P[2, 0].item() == 1.0
    buf.update_priorities(torch.tensor([[0, 0], [0, 0], [0, 0]]), torch.tensor([[9.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    # agent 0: the duplicate's last write is td 0, so the max stays 3.0
    buf.add(**make_rows([6, 7, 8], [0, 1, 2]))
    assert P[0, 3].item() == 3.0
    assert P[1, 2].item() == pytest.approx(0.2)  # (0 + eps)^alpha < 0.2
    assert P[2, 1].item() == 1.0
    buf.update_priorities(torch.tensor([[1, 1], [0, 0], [0, 0]]), torch.tensor([[0.0, 9.0], [0.0, 0.0], [0.0, 0.0]]))
    buf.add(**make_rows([9], [0]))
    assert P[0, 4].item() == pytest.approx(buf.priority_of(torch.tensor(9.0, dtype=torch.float64)).item())


@pytest.mark.parametrize("prioritized", [False, True])
def test_state_dict_round_trip_gives_identical_samples(prioritized):
    rng = np.random.default_rng(7)
    A, C = 3, 11
    kwargs = dict(obs_shape=(2,), obs_dtype=torch.float32, prioritized=prioritized)
    buf = per_replay(A, C, generator=torch.Generator().manual_seed(0), **kwargs)
    agent = rng.choice(A, size=30).tolist()
    buf.add(**make_rows(range(30), agent))
    batch = buf.sample(16)
    buf.update_priorities(batch["index"], torch.as_tensor(rng.exponential(size=(A, 16))))

    stream = io.BytesIO()
    torch.save(buf.state_dict(), stream)
    stream.seek(0)
    state = torch.load(stream, weights_only=True)
    assert all(isinstance(v, (torch.Tensor, int, float)) for v in state.values())

    other = per_replay(A, C, generator=torch.Generator().manual_seed(0), **kwargs)
    other.load_state_dict(state)
    buf.generator.manual_seed(123)
    other.generator.manual_seed(123)
    for _ in range(3):
        x, y = buf.sample(32), other.sample(32)
        for key in x:
            assert torch.equal(x[key], y[key]), key
    # and the restored buffer keeps evolving identically
    for b in (buf, other):
        b.add(**make_rows(range(100, 105), [0, 2, 2, 1, 0]))
    assert torch.equal(buf.sample(8)["index"], other.sample(8)["index"])


def test_descent_is_robust_to_extreme_priorities_and_tiny_buffers():
    rng = np.random.default_rng(8)
    A, C = 2, 1000  # 32 blocks of 32 leaves
    buf = per_replay(A, C, (2,), torch.float32, generator=torch.Generator().manual_seed(8))
    fill(buf, [37, 1000])
    td = rng.choice([0.0, 1e-12, 1.0, 1e12], size=(A, 37))
    index = np.stack([np.arange(37), rng.integers(0, 1000, size=37)])
    buf.update_priorities(torch.as_tensor(index), torch.as_tensor(td))
    leaves = buf.priorities
    for _ in range(20):
        idx = buf.sample(512)["index"]
        assert torch.all(idx[0] < 37)
        assert torch.all(leaves.gather(1, idx) > 0)

    tiny = per_replay(2, 1, (2,), torch.float32, generator=torch.Generator().manual_seed(0))
    fill(tiny, [3, 1])  # capacity 1: only the last transition is kept
    batch = tiny.sample(4)
    assert batch["index"].eq(0).all() and batch["action"][0].eq(2).all() and batch["weight"].eq(1).all()
