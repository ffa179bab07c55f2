"""Per-agent replay buffers with an agent dimension and optional prioritized replay.

Every agent owns a ring buffer of ``capacity`` transitions; all buffers live in one set of preallocated tensors
with a leading agent dimension ``A``, so adding and sampling are single vectorised torch ops for all agents.

Prioritized experience replay (PER, Schaul et al., 2016), proportional variant:

* transition ``i`` has priority ``p_i = (|delta_i| + eps) ** alpha``;
* it is sampled with probability ``P(i) = p_i / sum_j p_j`` (sum over the agent's own buffer);
* the bias of the non-uniform sampling is corrected by importance weights
  ``w_i = (N * P(i)) ** -beta / max_j w_j`` (N = the agent's buffer size, max over the agent's sampled batch).

The priorities sit in a two-level sum structure per agent (a sum tree of two wide levels, so that sampling and
updating take a handful of vectorised ops instead of one op per level of a binary tree): ``priorities [A, K*L]``
holds the priority of ring position ``i`` at ``i`` (the padding past ``capacity`` stays 0), and
``block_sums [A, K]`` the sum of each block of ``L`` consecutive positions (``L`` = the power of two nearest
sqrt(capacity)). Both are float64, and a block's sum is always recomputed from its leaves (never incremented by
a delta), so the sums do not drift.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_FIELDS = ("obs", "action", "reward", "next_obs", "terminated")


def _first_above(running_sum: Tensor, u: Tensor, positive: Tensor) -> Tensor:
    """Per row, the first position whose ``running_sum`` exceeds ``u`` (``[..., N]`` and ``[..., M]`` -> ``[..., M]``),
    but never past the last ``positive`` position (where rounding pushes ``u`` beyond the final sum)."""
    found = torch.searchsorted(running_sum, u.contiguous(), right=True)
    n = positive.shape[-1]
    last_positive = n - 1 - positive.flip(-1).to(torch.uint8).argmax(-1, keepdim=True)
    return torch.minimum(found, last_positive)


class AgentReplay:
    """Ring buffers ``[A, C, ...]`` for ``A`` agents with capacity ``C`` each, optionally prioritized.

    Storage: ``obs``/``next_obs`` ``[A, C, *obs_shape]`` (``obs_dtype``), ``action`` ``[A, C]`` int64,
    ``reward`` and ``terminated`` ``[A, C]`` float32; ``ptr`` (next write position) and ``size`` are ``[A]`` int64.

    ``beta`` is a plain attribute, so a caller may anneal it between ``sample`` calls. ``generator`` (if given)
    must live on ``device``; it drives all sampling randomness. Its state is not part of ``state_dict``: whoever
    owns the generator checkpoints it.
    """

    def __init__(
        self,
        n_agents: int,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype: torch.dtype,
        device: torch.device | str = "cpu",
        *,
        prioritized: bool,
        alpha: float,
        beta: float,
        eps: float,
        generator: torch.Generator | None = None,
    ):
        if n_agents < 1 or capacity < 1:
            raise ValueError(f"n_agents and capacity must be >= 1, got {n_agents} and {capacity}")
        self.n_agents = int(n_agents)
        self.capacity = int(capacity)
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.obs_dtype = obs_dtype
        self.device = torch.device(device)
        self.prioritized = bool(prioritized)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.eps = float(eps)
        self.generator = generator

        A, C, dev = self.n_agents, self.capacity, self.device
        self.obs = torch.zeros((A, C, *self.obs_shape), dtype=obs_dtype, device=dev)
        self.action = torch.zeros((A, C), dtype=torch.int64, device=dev)
        self.reward = torch.zeros((A, C), dtype=torch.float32, device=dev)
        self.next_obs = torch.zeros((A, C, *self.obs_shape), dtype=obs_dtype, device=dev)
        self.terminated = torch.zeros((A, C), dtype=torch.float32, device=dev)
        self.ptr = torch.zeros(A, dtype=torch.int64, device=dev)
        self.size = torch.zeros(A, dtype=torch.int64, device=dev)
        self._agent_ids = torch.arange(A, device=dev)

        # two-level sums: blocks of L leaves
        self.block_size = L = 1 << max(round(math.log2(math.sqrt(C))), 0) if C > 1 else 1
        self.n_blocks = -(-C // L)
        self.priorities = torch.zeros((A, self.n_blocks * L), dtype=torch.float64, device=dev) if self.prioritized else None
        self.block_sums = torch.zeros((A, self.n_blocks), dtype=torch.float64, device=dev) if self.prioritized else None
        # largest priority written into each agent's buffer so far; 0 means "none yet" (new data then gets 1.0)
        self.max_priority = torch.zeros(A, dtype=torch.float64, device=dev)

    # ------------------------------------------------------------------ priorities

    def priority_of(self, td_abs: Tensor) -> Tensor:
        """Raw PER priority ``p = (|delta| + eps) ** alpha``."""
        return (td_abs + self.eps) ** self.alpha

    def _set_leaves(self, agent: Tensor, pos: Tensor, priority: Tensor) -> None:
        """Write ``priority`` at ``(agent, pos)`` and recompute the sums of the blocks they fall in.

        Duplicated ``(agent, pos)`` pairs: the last one in the given order wins (an index assignment with duplicates
        is not ordered in torch, so we keep only the last occurrence of each pair before writing).
        """
        key = agent * self.priorities.shape[1] + pos
        uniq, inverse = torch.unique(key, return_inverse=True)
        if uniq.numel() < key.numel():
            order = torch.arange(key.numel(), device=key.device)
            last = torch.full_like(uniq, -1).scatter_reduce_(0, inverse, order, reduce="amax")
            agent, pos, priority = agent[last], pos[last], priority[last]

        priority = priority.to(torch.float64)
        self.priorities[agent, pos] = priority
        block = pos // self.block_size  # blocks touched twice get the same sum twice: harmless
        self.block_sums[agent, block] = self.priorities.view(self.n_agents, self.n_blocks, -1)[agent, block].sum(-1)
        self.max_priority.scatter_reduce_(0, agent, priority, reduce="amax")

    def update_priorities(self, index: Tensor, td_abs: Tensor) -> None:
        """Set the priority of sampled transitions ``index [A, B]`` to ``(td_abs + eps) ** alpha``.

        Row ``a`` of ``index`` addresses agent ``a``'s buffer (as returned by :meth:`sample`); duplicated indices are
        fine, the last one in row-major order wins. A no-op for a uniform buffer.
        """
        if not self.prioritized:
            return
        index = index.to(self.device, torch.int64)
        if index.dim() != 2 or index.shape[0] != self.n_agents or td_abs.shape != index.shape:
            raise ValueError(f"index and td_abs must both be [A={self.n_agents}, B], got {tuple(index.shape)} and {tuple(td_abs.shape)}")
        agent = self._agent_ids[:, None].expand_as(index).reshape(-1)
        priority = self.priority_of(td_abs.detach().to(self.device, torch.float64)).reshape(-1)
        self._set_leaves(agent, index.reshape(-1), priority)

    # ------------------------------------------------------------------ add / sample

    def add(
        self,
        agent: Tensor,
        obs: Tensor,
        action: Tensor,
        reward: Tensor,
        next_obs: Tensor,
        terminated: Tensor,
        priority: Tensor | None = None,
    ) -> None:
        """Insert ``M`` transitions; ``agent [M]`` says whose buffer row ``m`` goes to (any mix and order).

        Each agent's rows go to consecutive ring positions from that agent's pointer, in the given order, exactly
        as if they had been added one at a time: with ``rank`` = the row's index among the rows of its agent,
        ``position = (ptr[agent] + rank) % C``. When an agent gets ``M_a > C`` rows only its last ``C`` are kept.

        ``priority [M]`` is the raw priority ``p`` (see :meth:`priority_of`); ``None`` gives each new transition
        the largest priority written into its agent's buffer so far (1.0 if there was none), so that it is
        sampled at least once soon (Schaul et al.).
        """
        agent = agent.to(self.device, torch.int64).reshape(-1)
        M = agent.numel()
        if M == 0:
            return
        if int(agent.min()) < 0 or int(agent.max()) >= self.n_agents:
            raise ValueError(f"agent ids must be in [0, {self.n_agents}), got {agent.min().item()}..{agent.max().item()}")
        C = self.capacity

        # rank of each row within its agent: stable sort by agent, then position minus the start of its group
        counts = torch.bincount(agent, minlength=self.n_agents)
        starts = torch.cumsum(counts, 0) - counts
        sorted_agent, order = torch.sort(agent, stable=True)
        rank = torch.empty_like(agent)
        rank[order] = torch.arange(M, device=self.device) - starts[sorted_agent]

        keep = rank >= counts[agent] - C  # only the last C rows of an agent survive
        rows = keep.nonzero().squeeze(1)
        a, pos = agent[rows], (self.ptr[agent[rows]] + rank[rows]) % C  # unique per agent after the filter

        self.obs[a, pos] = obs.to(self.device)[rows].to(self.obs_dtype)
        self.action[a, pos] = action.to(self.device)[rows].to(torch.int64)
        self.reward[a, pos] = reward.to(self.device)[rows].to(torch.float32)
        self.next_obs[a, pos] = next_obs.to(self.device)[rows].to(self.obs_dtype)
        self.terminated[a, pos] = terminated.to(self.device)[rows].to(torch.float32)

        if self.prioritized:
            if priority is None:
                default = torch.where(self.max_priority > 0, self.max_priority, torch.ones_like(self.max_priority))
                p = default[a]
            else:
                p = priority.detach().to(self.device, torch.float64).reshape(-1)[rows]
            self._set_leaves(a, pos, p)

        self.ptr = (self.ptr + counts) % C
        self.size = torch.clamp(self.size + counts, max=C)

    def sample(self, batch_size: int) -> dict[str, Tensor]:
        """Sample ``B`` transitions from every agent's buffer (with replacement).

        Returns ``[A, B, ...]`` tensors ``obs, action, reward, next_obs, terminated``, plus ``index [A, B]`` (ring
        positions, for :meth:`update_priorities`) and ``weight [A, B]`` (float32 importance weights, all ones
        for a uniform buffer).

        Uniform: ``index = floor(U * size_a)`` with ``U ~ U[0, 1)``.
        Prioritized (stratified proportional): with ``S_a`` the sum of agent ``a``'s priorities, segment ``b`` is
        ``[b S_a / B, (b + 1) S_a / B)``; draw ``u`` uniformly in it, find the block whose running sum first
        exceeds ``u``, then the leaf within that block whose running sum first exceeds what is left of ``u``. This
        lands on leaf ``i`` with probability ``p_i / S_a`` overall; all ``A x B`` draws run together. Rounding can
        push ``u`` past the last running sum; the search then takes the last block (leaf) of positive sum, so the
        leaf reached always has a positive priority, hence lies below ``size`` (the index is clamped as well).
        The batch comes out ordered by segment, i.e. roughly by ring position.
        """
        if int(self.size.min()) < 1:
            raise ValueError(f"every agent needs at least one transition before sampling; sizes: {self.size.tolist()}")
        A, B, dev = self.n_agents, int(batch_size), self.device
        size = self.size[:, None]
        u01 = torch.rand((A, B), generator=self.generator, device=dev, dtype=torch.float64)

        if not self.prioritized:
            index = torch.minimum((u01 * size).long(), size - 1)
            weight = torch.ones((A, B), dtype=torch.float32, device=dev)
        else:
            total = self.block_sums.sum(1, keepdim=True)  # [A, 1]
            u = (torch.arange(B, device=dev, dtype=torch.float64) + u01) * (total / B)
            # the block holding u, then the leaf within it: the first whose running sum passes u
            running = self.block_sums.cumsum(1)
            block = _first_above(running, u, self.block_sums > 0)
            left = (u - running.gather(1, block) + self.block_sums.gather(1, block)).clamp_min(0.0)  # u past earlier blocks
            leaves = self.priorities.view(A, self.n_blocks, -1)[self._agent_ids[:, None], block]  # [A, B, L]
            within = _first_above(leaves.cumsum(-1), left.unsqueeze(-1), leaves > 0).squeeze(-1)
            index = torch.minimum(block * self.block_size + within, size - 1)

            # w_i = (N P(i))^-beta / max_j w_j, P(i) = p_i / S_a; tiny floor so a zero priority cannot give inf
            prob = self.priorities.gather(1, index) / total
            weight = (size * prob).clamp_min(1e-300) ** (-self.beta)
            weight = (weight / weight.max(dim=1, keepdim=True).values).to(torch.float32)

        rows = self._agent_ids[:, None]
        batch = {name: getattr(self, name)[rows, index] for name in _FIELDS}
        batch["index"] = index
        batch["weight"] = weight
        return batch

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Tensor | int | float]:
        """Buffers, pointers, priorities and config; tensors and plain numbers only (``weights_only`` loadable)."""
        state: dict[str, Tensor | int | float] = {
            "n_agents": self.n_agents,
            "capacity": self.capacity,
            "prioritized": int(self.prioritized),
            "alpha": self.alpha,
            "beta": self.beta,
            "eps": self.eps,
            "ptr": self.ptr,
            "size": self.size,
            "max_priority": self.max_priority,
        }
        for name in _FIELDS:
            state[name] = getattr(self, name)
        if self.prioritized:
            state["priorities"] = self.priorities
            state["block_sums"] = self.block_sums
        return state

    def load_state_dict(self, state: dict[str, Tensor | int | float]) -> None:
        """Restore from :meth:`state_dict`; the buffer must have been built with the same shape and mode."""
        for key, mine in (("n_agents", self.n_agents), ("capacity", self.capacity), ("prioritized", int(self.prioritized))):
            if int(state[key]) != mine:
                raise ValueError(f"replay state has {key}={state[key]}, this buffer has {mine}")
        if tuple(state["obs"].shape[2:]) != self.obs_shape:
            raise ValueError(f"replay state has obs shape {tuple(state['obs'].shape[2:])}, this buffer has {self.obs_shape}")
        self.alpha, self.beta, self.eps = float(state["alpha"]), float(state["beta"]), float(state["eps"])
        for name in (*_FIELDS, "ptr", "size", "max_priority"):
            getattr(self, name).copy_(state[name])
        if self.prioritized:
            self.priorities.copy_(state["priorities"])
            self.block_sums.copy_(state["block_sums"])


class RingReplay:
    """A preallocated ring buffer of rows with named fields, sampled uniformly.

    ``fields`` maps a name to the (shape, dtype) of one row's entry. Storage is made with ``torch.empty``, so the
    memory of a large capacity is only touched as it fills. Fields named in ``as_float`` (observations kept in a
    compact dtype) come back as float32 from ``sample``.
    """

    def __init__(self, capacity: int, fields: dict[str, tuple[tuple[int, ...], torch.dtype]], device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None, as_float: tuple[str, ...] = ()):
        self.capacity, self.device, self.generator = int(capacity), torch.device(device), generator
        self.fields, self.as_float = tuple(fields), as_float
        for name, (shape, dtype) in fields.items():
            setattr(self, name, torch.empty((self.capacity, *shape), dtype=dtype, device=self.device))
        self.ptr = 0
        self.size = 0

    def add(self, **values: Tensor) -> None:
        """Append ``n`` rows (the leading dim of every field), wrapping around the ring; beyond capacity, the last rows win."""
        n = next(iter(values.values())).shape[0]
        if n > self.capacity:
            values = {name: value[n - self.capacity :] for name, value in values.items()}
            self.ptr, n = (self.ptr + n - self.capacity) % self.capacity, self.capacity
        rows = torch.arange(self.ptr, self.ptr + n, device=self.device) % self.capacity
        for name in self.fields:
            store = getattr(self, name)
            store[rows] = values[name].to(store.dtype)
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> dict[str, Tensor]:
        """``batch_size`` rows drawn uniformly with replacement."""
        rows = torch.randint(0, self.size, (batch_size,), generator=self.generator, device=self.device)
        batch = {name: getattr(self, name)[rows] for name in self.fields}
        for name in self.as_float:
            batch[name] = batch[name].float()
        return batch

    def state_dict(self) -> dict:
        # Rows [0, size) are the filled ones (the ring wraps only once it is full).
        return {"ptr": self.ptr, "size": self.size, **{name: getattr(self, name)[: self.size].clone() for name in self.fields}}

    def load_state_dict(self, state: dict) -> None:
        size = state["size"]
        if size > self.capacity:
            raise ValueError(f"the saved replay holds {size} rows, more than this buffer's capacity {self.capacity}")
        for name in self.fields:
            getattr(self, name)[:size] = state[name].to(self.device)
        self.ptr, self.size = state["ptr"], size


class JointReplay(RingReplay):
    """Joint transitions ``[C, A, ...]``: every agent's part of one env step in one row.

    For algorithms whose learners read all agents' data at once (a centralised critic): a sampled row gives
    every agent's observation, action, reward and successor. Actions are float vectors ``[K]`` (one-hot for
    discrete actions, so a critic can read them directly).
    """

    def __init__(self, capacity: int, n_agents: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype, action_size: int,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None):
        A = n_agents
        fields = {
            "obs": ((A, *obs_shape), obs_dtype), "action": ((A, action_size), torch.float32), "reward": ((A,), torch.float32),
            "next_obs": ((A, *obs_shape), obs_dtype), "terminated": ((A,), torch.float32),
        }
        super().__init__(capacity, fields, device, generator, as_float=("obs", "next_obs"))
