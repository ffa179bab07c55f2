"""An Ising-model environment in torch: every spin of a periodic lattice is an agent.

All spins act at once: action 1 sets a spin up (+1), action 0 down (-1), so after a step the lattice *is* the joint
action. Agent i observes ``[own spin, its k neighbour spins]`` (``observation="spins"``) or only its k neighbours'
spins (``observation="neighbours"``: the MF-Q paper's Ising code, whose state is the number of up neighbours), and is
rewarded on the new spins, either with its share of the (negative) bond energy ("physical") or with how well it
agrees with its neighbours ("alignment", the mean-field paper's reward).

With the physical reward the rewards add up to minus the lattice energy, sum_i r_i = -E(s) with
E(s) = -J sum_<ij> s_i s_j - h sum_i s_i (every bond once): the spec then has the capability "ising_energy", and
``context()`` says J and h, for a sampler of exp(-E / T) (algo=mcmc).

``IsingVecEnv`` steps ``num_envs`` lattices as batched tensors on one device (no Python loop over sites or copies);
``IsingParallelEnv`` is one lattice of the same core as a PettingZoo ``ParallelEnv``. ``draw_ising`` draws a lattice.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import gymnasium
import numpy as np
import torch
from pettingzoo.utils.env import ParallelEnv

from marlrun.envs.base import EnvSpec, IndexNeighbours, VecEnv, VecStep
from marlrun.errors import require
from marlrun.render import BLACK, WHITE, cells

REWARDS = ("physical", "alignment")
OBSERVATIONS = ("spins", "neighbours")  # [own spin, k neighbour spins] | [k neighbour spins]
NEIGHBOURS = {1: (2,), 2: (4, 8)}  # allowed neighbourhood sizes per lattice dimension
ISING_SIZE, RING_HEIGHT = 256, 32  # frames: a 2D lattice about 256 pixels wide; a ring at least 32 pixels tall


@dataclass
class IsingConfig:
    """Ising model of marlrun's own, in torch: every spin of a ring or torus is an agent choosing up or down."""

    name: str = "ising"
    dims: int = 2  # 1: a ring of L spins; 2: an L x L torus
    L: int = 32  # side of the lattice (spins per side)
    neighbours: int = 4  # 1D: 2; 2D: 4 (von Neumann) or 8 (with diagonals)
    reward: str = "physical"  # physical: 0.5 * J * s_i * sum of neighbour spins + h * s_i | alignment: the seed chapter's tanh(5 * (onehot(a_i) . abar_i - 0.5))
    J: float = 1.0  # coupling
    h: float = 0.0  # external field
    max_cycles: int = 100  # steps per episode (then a fresh random lattice)
    observation: str = "spins"  # spins: [own spin, neighbour spins] | neighbours: the neighbours' spins only (the MF-Q paper's Ising code)

    def __post_init__(self) -> None:
        require(self.dims in NEIGHBOURS, "env.dims", f"must be 1 (ring) or 2 (torus), got {self.dims}")
        require(self.L >= 3, "env.L", f"the lattice side must be >= 3, got {self.L}")
        allowed = NEIGHBOURS[self.dims]
        require(self.neighbours in allowed, "env.neighbours", f"a {self.dims}D lattice takes {' or '.join(map(str, allowed))} neighbours, got {self.neighbours}")
        require(self.reward in REWARDS, "env.reward", f"unknown reward '{self.reward}'; pick one of {', '.join(REWARDS)}")
        require(self.observation in OBSERVATIONS, "env.observation",
                f"unknown observation '{self.observation}'; pick one of {', '.join(OBSERVATIONS)}")
        require(self.max_cycles >= 1, "env.max_cycles", "must be >= 1")

    def footprint(self, num_envs: int) -> tuple[int, str]:
        """At least how many bytes ``num_envs`` copies hold (each copy's spins, observations, rewards and masks; the
        neighbour tables once), and the keys that size them."""
        spins = self.L ** self.dims
        per_copy = spins * (8 + 4 * (self.neighbours + 1) + 4 + 2)
        return per_copy * num_envs + spins * (self.neighbours + 1) * 16, f"env.L={self.L:,} ({spins:,} spins)"


def _validate_lattice(dims: int, L: int, neighbours: int) -> None:
    if dims not in NEIGHBOURS:
        raise ValueError(f"Ising lattice dims must be 1 or 2, got {dims!r}")
    if not isinstance(L, numbers.Integral) or L < 3:
        raise ValueError(f"Ising lattice side L must be an integer >= 3 (smaller rings repeat neighbours), got {L!r}")
    if neighbours not in NEIGHBOURS[dims]:
        allowed = " or ".join(map(str, NEIGHBOURS[dims]))
        raise ValueError(f"a {dims}D Ising lattice has {allowed} neighbours per spin, got neighbours={neighbours!r}")


def lattice_neighbours(dims: int, L: int, k: int) -> torch.Tensor:
    """Neighbour indices [N, k] (long) of every site of a periodic lattice; N = L ** dims.

    Sites are numbered x (1D) or x * L + y (2D, row-major). Column order: 1D ring (k=2): left (x-1), right (x+1).
    2D torus: up (x-1, y), down (x+1, y), left (x, y-1), right (x, y+1); k=8 adds the diagonals
    (x-1, y-1), (x-1, y+1), (x+1, y-1), (x+1, y+1).
    """
    _validate_lattice(dims, L, k)
    if dims == 1:
        x = torch.arange(L)
        return torch.stack([(x - 1) % L, (x + 1) % L], dim=1)
    offsets = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if k == 8:
        offsets += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    x = torch.arange(L).repeat_interleave(L)  # row of each flat site
    y = torch.arange(L).repeat(L)  # column
    return torch.stack([((x + dx) % L) * L + (y + dy) % L for dx, dy in offsets], dim=1)


def ising_spec(cfg: IsingConfig) -> EnvSpec:
    n = cfg.L**cfg.dims
    return EnvSpec(
        name=cfg.name,
        agent_names=tuple(f"spin_{i}" for i in range(n)),
        obs_shape=(cfg.neighbours + (cfg.observation == "spins"),),
        n_actions=2,
        teams=("spin",) * n,
        obs_storage_dtype=torch.int8,  # spins are +-1
        # "ising_energy": the rewards add up to minus an Ising energy (context() says J and h), which algo=mcmc samples
        capabilities=frozenset({"neighbours", "ising_energy"} if cfg.reward == "physical" else {"neighbours"}),
    )


def ising_cell(dims: int, L: int) -> int:
    """Pixels per spin (per side) in a frame."""
    return max(1, (2 * ISING_SIZE if dims == 1 else ISING_SIZE) // L)


def draw_ising(spins: np.ndarray, dims: int, L: int) -> np.ndarray:
    """A frame of one lattice: spins [L ** dims] (+-1; 2D: site x * L + y is row x, column y) as one block of pixels
    each, up white, down black (a ring is one row of blocks, at least RING_HEIGHT pixels tall)."""
    up = np.asarray(spins).reshape((1, L) if dims == 1 else (L, L)) > 0
    colours = np.where(up[..., None], WHITE, BLACK).astype(np.uint8)
    cell = ising_cell(dims, L)
    return cells(colours, max(cell, RING_HEIGHT) if dims == 1 else cell, cell)


class IsingVecEnv(VecEnv):
    legend = (("spin up", WHITE), ("spin down", BLACK))

    """``num_envs`` independent periodic Ising lattices, stepped at once as tensors [envs, spins, ...] on ``device``.

    Episodes last exactly ``max_cycles`` steps (truncation, never termination); a finished lattice is reset to
    uniformly random spins at once, as ``PettingZooVecEnv`` does. The random generator lives on ``device`` and is
    seeded with ``seed``; ``reset()`` re-seeds it, so every ``reset()`` restarts the same episodes (as the copies of
    a ``PettingZooVecEnv`` do), which is what evaluation relies on.
    """

    def __init__(self, cfg: IsingConfig, num_envs: int, seed: int, device: torch.device | str = "cpu"):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs!r}")
        self.cfg = cfg
        self.dims, self.L, self.k = int(cfg.dims), int(cfg.L), int(cfg.neighbours)
        self.reward_kind, self.J, self.h = cfg.reward, float(cfg.J), float(cfg.h)
        self.max_cycles = int(cfg.max_cycles)
        self.observation = cfg.observation
        self.spec = ising_spec(cfg)
        self.num_envs, self.n_agents, self.device = num_envs, self.spec.n_agents, torch.device(device)
        self.seed = int(seed)
        self.index = lattice_neighbours(self.dims, self.L, self.k).to(self.device)  # [N, k]
        # one gather of the flat spins [E, N] by [own, neighbours] gives the observations [E, N, k + 1]
        self._obs_index = torch.cat([torch.arange(self.n_agents, device=self.device)[:, None], self.index], 1).reshape(1, -1)
        self._field_weights = torch.ones(self.k + 1, device=self.device)  # obs @ weights = sum of neighbour spins
        self._field_weights[0] = 0.0
        self._neighbours = IndexNeighbours(self.index)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(self.seed)
        self._spins: torch.Tensor | None = None  # [E, N] float32 +-1, the current state
        self._metric_sums, self._metric_count = [0.0, 0.0], 0  # xi and energy summed over lattices and steps since the last log
        self._steps = torch.zeros(num_envs, dtype=torch.long)  # on the host: truncation needs no device sync
        self._actions: torch.Tensor | None = None

    # ------------------------------------------------------------------ dynamics on tensors

    def _random_spins(self, n: int) -> torch.Tensor:
        up = torch.randint(0, 2, (n, self.n_agents), generator=self._generator, device=self.device)
        return up.to(torch.float32).mul_(2.0).sub_(1.0)

    def _observe(self, spins: torch.Tensor) -> torch.Tensor:
        """[n, N] spins -> [n, N, k + 1] full observations: own spin, then the neighbours' in ``index`` order (what
        rewards and metrics are computed from; agents see ``_agent_view`` of them)."""
        # gather with an expanded index is several times faster on CPU than index_select or advanced indexing
        obs = torch.gather(spins, 1, self._obs_index.expand(spins.shape[0], -1))
        return obs.view(spins.shape[0], self.n_agents, self.k + 1)

    def _agent_view(self, full: torch.Tensor) -> torch.Tensor:
        """What the agents observe of full observations [n, N, k + 1]: all of it, or the neighbours' spins only."""
        return full if self.observation == "spins" else full[..., 1:]

    def _split(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Own spins [n, N] and neighbour sums [n, N] from observations."""
        return obs[..., 0], obs @ self._field_weights  # a matrix-vector product beats .sum(-1) over k + 1 entries

    def _physical(self, own: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
        # each bond's energy -J s_i s_j is shared by its two ends, hence the 0.5
        reward = field.mul_(0.5 * self.J)  # field is a fresh tensor
        if self.h != 0.0:
            reward.add_(self.h)
        return reward.mul_(own)

    def rewards(self, obs: torch.Tensor, own: torch.Tensor | None = None) -> torch.Tensor:
        """Every agent's reward [n, N] (float32) in the state seen by ``obs`` [n, N, k + 1] (own spins [n, N] if known)."""
        obs_own, field = self._split(obs)
        own = obs_own if own is None else own
        if self.reward_kind == "physical":
            return self._physical(own, field)
        # onehot(a_i) . mean one-hot of the neighbours = share of neighbours agreeing = (1 + s_i * field / k) / 2,
        # so tanh(5 * (share - 1/2)) = tanh(2.5 * s_i * field / k)
        return field.mul_(own).mul_(2.5 / self.k).tanh_()

    def episode_metrics(self, final_obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Order parameter and energy per spin of lattices [n] from their full observations [n, N, k + 1] (own spin
        first, as with ``observation="spins"``)."""
        if final_obs.shape[-1] != self.k + 1:
            raise ValueError(f"episode_metrics needs full observations [n, N, {self.k + 1}] (own spin first), got {tuple(final_obs.shape)}")
        own, field = self._split(final_obs)
        return {
            "game/xi": own.mean(1).abs(),
            "game/energy_per_spin": -self._physical(own, field).mean(1),
        }

    # ------------------------------------------------------------------ the vector-env interface

    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Random spins in every lattice, from the generator re-seeded with ``seed`` (default: the env's seed)."""
        self._generator.manual_seed(self.seed if seed is None else int(seed))
        return self._reset_all()

    def _reset_all(self) -> torch.Tensor:
        """Random spins in every lattice, drawn from the generator as it stands."""
        self._spins = self._random_spins(self.num_envs)
        self._steps.zero_()
        self._metric_sums, self._metric_count = [0.0, 0.0], 0
        self._actions = None
        return self._agent_view(self._observe(self._spins))

    def step_async(self, actions: torch.Tensor) -> None:
        if self._spins is None:
            raise RuntimeError("IsingVecEnv.step before reset()")
        if tuple(actions.shape) != (self.num_envs, self.n_agents):
            raise ValueError(f"Ising actions must have shape {(self.num_envs, self.n_agents)}, got {tuple(actions.shape)}")
        self._actions = actions

    def step_wait(self) -> VecStep:
        if self._actions is None:
            raise RuntimeError("IsingVecEnv.step_wait without step_async")
        actions, self._actions = self._actions.to(self.device), None
        E, N = self.num_envs, self.n_agents
        spins = (actions != 0).to(torch.float32).mul_(2.0).sub_(1.0)  # 1 = up, 0 = down
        self._spins = spins
        full = self._observe(spins)
        reward = self.rewards(full, spins)
        metrics = self.episode_metrics(full)  # of every lattice after this step, for state_metrics()
        next_obs = self._agent_view(full)
        self._metric_sums = [total + value.sum() for total, value in zip(self._metric_sums, metrics.values())]
        self._metric_count += E
        self._steps += 1
        done_host = self._steps >= self.max_cycles
        if bool(done_host.any()):
            done = done_host.to(self.device)
            ended = done_host.nonzero().squeeze(1)
            ended_dev = ended.to(self.device)
            self._steps[ended] = 0
            fresh = self._random_spins(len(ended))
            self._spins = spins.index_copy(0, ended_dev, fresh)
            obs = next_obs.index_copy(0, ended_dev, self._agent_view(self._observe(fresh)))
            info = metrics
        else:
            done = torch.zeros(E, dtype=torch.bool, device=self.device)
            obs, info = next_obs, {}
        return VecStep(
            obs=obs,
            next_obs=next_obs,  # the same tensor as obs where no lattice was reset
            reward=reward,
            terminated=torch.zeros(E, N, dtype=torch.bool, device=self.device),
            truncated=done[:, None].expand(E, N).clone(),
            alive=torch.ones(E, N, dtype=torch.bool, device=self.device),
            episode_end=done,
            episode_info=info,
        )

    def context(self) -> dict:
        """The lattice neighbourhood, every spin's previous action (its current spin, also right after reset) and, with
        the physical reward, the coupling J and field h of the energy the rewards add up to (minus)."""
        if self._spins is None:
            raise RuntimeError("IsingVecEnv.context before reset()")
        context = {"neighbours": self._neighbours, "prev_actions": (self._spins > 0).long()}
        if self.reward_kind == "physical":
            context.update(coupling=self.J, field=self.h)
        return context

    def state_metrics(self) -> dict[str, float]:
        """Order parameter and energy per spin after every step since the last call, averaged over steps and lattices
        (a snapshot at log time could fall just after a reset)."""
        if self._metric_count == 0:
            return {}
        xi, energy = (float(total) / self._metric_count for total in self._metric_sums)
        self._metric_sums, self._metric_count = [0.0, 0.0], 0
        return {"xi": xi, "energy_per_spin": energy}

    def spins(self) -> torch.Tensor:
        """The current spins [E, N] (float32, +-1); a copy."""
        if self._spins is None:
            raise RuntimeError("IsingVecEnv.spins before reset()")
        return self._spins.clone()

    def frame(self, index: int = 0) -> np.ndarray:
        """Copy ``index`` drawn by ``draw_ising``."""
        self.check_copy(index)
        return draw_ising(self.spins()[index].cpu().numpy(), self.dims, self.L)

    def close(self) -> None:
        pass


def make_ising(cfg: IsingConfig, num_envs: int, num_workers: int, seed: int, device="cpu") -> IsingVecEnv:
    """The runner's factory: ``num_envs`` lattices on ``device`` (``num_workers`` is ignored: no worker processes)."""
    return IsingVecEnv(cfg, num_envs, seed, device)


class IsingParallelEnv(ParallelEnv):
    """One Ising lattice as a PettingZoo ``ParallelEnv``: an ``IsingVecEnv`` with a single copy underneath.

    Observations are float32 arrays [k + 1] (own spin, neighbour spins), actions Discrete(2) (0 down, 1 up).
    After ``max_cycles`` steps every agent is truncated and ``agents`` becomes empty.
    """

    metadata = {"name": "ising_v0", "render_modes": ["rgb_array"], "is_parallelizable": True}

    def __init__(self, cfg: IsingConfig | None = None, *, seed: int = 0, device: torch.device | str = "cpu", render_mode: str | None = None,
                 **keys):
        """``cfg``, or the keys of an ``IsingConfig`` (``IsingParallelEnv(L=8)``; the others take its defaults)."""
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"Ising render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.core = IsingVecEnv(IsingConfig(**keys) if cfg is None else cfg, 1, seed, device)
        self.render_mode = render_mode
        self.possible_agents = list(self.core.spec.agent_names)
        self.agents: list[str] = []
        self._observation_space = gymnasium.spaces.Box(-1.0, 1.0, self.core.spec.obs_shape, np.float32)
        self._action_space = gymnasium.spaces.Discrete(2)
        self._obs: torch.Tensor | None = None  # [N, obs size], the last observation returned
        self._shown: torch.Tensor | None = None  # [N] the spins of the lattice that observation is of (for render)

    @property
    def max_cycles(self) -> int:
        return self.core.max_cycles

    @max_cycles.setter
    def max_cycles(self, value: int) -> None:  # pettingzoo's parallel_api_test sets it
        if not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"Ising max_cycles must be an integer >= 1, got {value!r}")
        self.core.max_cycles = value

    def observation_space(self, agent):
        return self._observation_space

    def action_space(self, agent):
        return self._action_space

    def _obs_dict(self, obs: torch.Tensor) -> dict:
        rows = obs.detach().cpu().numpy()
        return {agent: rows[i] for i, agent in enumerate(self.possible_agents)}

    def reset(self, seed=None, options=None):
        obs = self.core.reset(seed) if seed is not None else self.core._reset_all()
        self._obs = obs[0]
        self._shown = self.core.spins()[0]
        self.agents = self.possible_agents[:]
        return self._obs_dict(self._obs), {agent: {} for agent in self.agents}

    def step(self, actions):
        if not self.agents:
            return {}, {}, {}, {}, {}
        current = (self.core._spins[0] > 0).long()  # an agent given no action keeps its spin
        given = [(i, int(actions[agent])) for i, agent in enumerate(self.possible_agents) if agent in actions]
        if given:
            where, values = zip(*given)
            current[list(where)] = torch.tensor(values, dtype=torch.long, device=current.device)
        step = self.core.step(current[None])
        self._shown = current.to(torch.float32) * 2 - 1  # the lattice is the joint action (before any reset)
        final = bool(step.episode_end[0])
        self._obs = step.next_obs[0]  # the final observation where the episode ended (the core has reset already)
        obs = self._obs_dict(self._obs)
        rewards = dict(zip(self.possible_agents, step.reward[0].tolist()))
        terminations = {agent: False for agent in self.possible_agents}
        truncations = {agent: final for agent in self.possible_agents}
        infos = {agent: {} for agent in self.possible_agents}
        if final:
            self.agents = []
        return obs, rewards, terminations, truncations, infos

    def render(self):
        if self.render_mode is None:
            gymnasium.logger.warn("IsingParallelEnv.render() without render_mode: pass render_mode='rgb_array'")
            return None
        if self._obs is None:
            raise RuntimeError("IsingParallelEnv.render before reset()")
        up = (self._shown > 0).cpu().numpy()
        side = self.core.L
        grid = up.reshape(1, side) if self.core.dims == 1 else up.reshape(side, side)
        # square blocks, ISING_SIZE // L pixels a side (a 2D lattice: as draw_ising; a ring: one row of square blocks)
        return cells(np.where(grid[..., None], WHITE, BLACK).astype(np.uint8), max(1, ISING_SIZE // side))

    def close(self):
        self.core.close()
