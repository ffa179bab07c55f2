"""magent2 battle_v4: two teams (red, blue) on a grid, each agent sees a 13x13 view and picks one of 21 moves/attacks.

The copies are stepped in this process (the game itself is C++). Every agent keeps its slot in [E, A] tensors for
the whole round: an agent that dies reports its last transition with ``terminated`` and is ``alive=False``
afterwards (zero observation, zero reward, no action). A round ends at ``max_cycles`` or as soon as one team is
eliminated (the survivors' transitions are then terminal: the game is over).

For mean-field algorithms, ``context()`` gives each agent's neighbours: the living agents of its own team within
``view_radius`` cells (Chebyshev distance, the square an agent sees), found from the agents' positions in one
vectorised comparison, together with everyone's previous action.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch

_omp_threads = os.environ.get("OMP_NUM_THREADS")
from magent2.environments import battle_v4  # noqa: E402

if _omp_threads is None:  # magent2 sets OMP_NUM_THREADS to half the cores when imported; torch's threads are the runner's to set
    os.environ.pop("OMP_NUM_THREADS", None)

from marlrun.envs.base import EnvSpec, MaskNeighbours, VecEnv, VecStep
from marlrun.envs.vector import copy_seed
from marlrun.errors import require
from marlrun.render import BLUE, FLOOR, RED, WALL, cells


@dataclass
class BattleConfig:
    """magent2 battle_v4: red against blue; map_size 40 gives 64 against 64 (the MF-Q paper's setting)."""

    name: str = "battle"
    map_size: int = 40  # side of the square map; the library places about map_size^2 * 0.04 agents per team
    max_cycles: int = 400  # steps per round (the MF-Q paper's 400; the library's default is 1000)
    view_radius: int = 6  # mean fields: teammates within this many cells (6 = the 13x13 view)
    minimap_mode: bool = False  # add the library's minimap channels to observations
    extra_features: bool = False  # add the library's extra feature channels (last action, last reward...)
    step_reward: float = -0.005  # reward every step (the library's default)
    dead_penalty: float = -0.1  # reward on dying (the library's default)
    attack_penalty: float = -0.1  # reward per attack (the library's default)
    attack_opponent_reward: float = 0.2  # reward per attack that hits an opponent (the library's default)

    def __post_init__(self) -> None:
        require(self.map_size >= 12, "env.map_size", f"battle_v4 needs a map of at least 12x12, got {self.map_size}")
        require(self.max_cycles >= 1, "env.max_cycles", "must be >= 1")
        require(self.view_radius >= 0, "env.view_radius", "must be >= 0")

    def footprint(self, num_envs: int) -> tuple[int, str]:
        """At least how many bytes ``num_envs`` copies hold (each copy's map layers and its agents' 13x13 views, the
        library's and the adapter's), and the keys that size them."""
        agents = 2 * int(self.map_size ** 2 * 0.04)
        view = 13 * 13 * (5 + 4 * self.minimap_mode) * 4
        return (self.map_size ** 2 * 8 * 4 + agents * view * 2) * num_envs, f"env.map_size={self.map_size:,} ({agents:,} agents)"

TEAMS = ("red", "blue")
BATTLE_SIZE = 480  # frames: about this many pixels per side of the map (at least 2 per cell)


def library_state(env) -> np.ndarray:
    """magent2's ``state()`` of one battle, also once a team is wiped out: the library's own loop over the teams
    unpacks each team's positions and fails on an empty one (magent2 0.3), so it is handed the teams that still have
    agents; a wiped-out team's channels stay empty, as they should."""
    handles = env._all_handles
    present = [h for h in handles if len(env.env.get_pos(h))]
    if len(present) == len(handles):
        return env.state()
    env._all_handles = present
    try:
        return env.state()
    finally:
        env._all_handles = handles


def battle_spec(cfg: BattleConfig) -> EnvSpec:
    env = battle_v4.parallel_env(map_size=cfg.map_size, minimap_mode=cfg.minimap_mode, extra_features=cfg.extra_features)
    agents = tuple(env.possible_agents)
    obs_shape = env.observation_space(agents[0]).shape
    state_shape = env.state_space.shape  # the library's state(): walls, each team's presence and hit points (and features)
    env.close()
    return EnvSpec(
        name=cfg.name,
        agent_names=agents,
        obs_shape=tuple(obs_shape),
        n_actions=21,  # 13 moves and 8 attacks
        teams=tuple(a.split("_")[0] for a in agents),
        agents_can_die=True,
        capabilities=frozenset({"neighbours", "state"}),
        state_shape=tuple(state_shape),
    )


def battle_cell(map_size: int) -> int:
    """Pixels per cell (per side) in a frame."""
    return max(2, BATTLE_SIZE // map_size)


def draw_battle(map_size: int, walls: np.ndarray, positions: np.ndarray, teams: np.ndarray) -> np.ndarray:
    """A frame of one battle: the map, walls dark, agents red (team 0) or blue (team 1). walls and agent positions
    as (x, y) rows, x the column; teams: the team index of each agent."""
    colours = np.full((map_size, map_size, 3), FLOOR, dtype=np.uint8)
    colours[walls[:, 1], walls[:, 0]] = WALL
    colours[positions[:, 1], positions[:, 0]] = np.where(np.asarray(teams)[:, None] == 0, RED, BLUE)
    return cells(colours, battle_cell(map_size))


def neighbour_mask(positions: torch.Tensor, alive: torch.Tensor, teams: torch.Tensor, radius: int) -> torch.Tensor:
    """[E, A, A] bool: j is a neighbour of i when both live, share a team, j != i, and max(|dx|, |dy|) <= radius.

    positions [E, A, 2], alive [E, A], teams [A] (team index of each slot)."""
    gap = (positions[:, :, None, :] - positions[:, None, :, :]).abs().amax(-1)
    same_team = teams[:, None] == teams[None, :]
    not_self = ~torch.eye(len(teams), dtype=torch.bool, device=positions.device)
    return (gap <= radius) & same_team & not_self & alive[:, :, None] & alive[:, None, :]


class BattleVecEnv(VecEnv):
    legend = (("red team", RED), ("blue team", BLUE), ("wall", WALL))

    """``num_envs`` copies of battle_v4 as one batched environment with fixed agent slots."""

    def __init__(self, cfg: BattleConfig, num_envs: int, seed: int, device="cpu"):
        self.cfg, self.num_envs, self.device = cfg, num_envs, torch.device(device)
        self.spec = battle_spec(cfg)
        self.n_agents = A = self.spec.n_agents
        self.view_radius = cfg.view_radius
        kwargs = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("name", "view_radius")}
        self.envs = [battle_v4.parallel_env(**kwargs) for _ in range(num_envs)]
        self.seeds = [copy_seed(seed, i) for i in range(num_envs)]
        self.names = self.spec.agent_names
        self.index = {agent: i for i, agent in enumerate(self.names)}
        self.team_index = np.array([TEAMS.index(t) for t in self.spec.teams])
        self.team_of = torch.as_tensor(self.team_index, device=self.device)
        self.obs_shape = self.spec.obs_shape
        self.alive = np.zeros((num_envs, A), dtype=bool)
        self.positions = np.zeros((num_envs, A, 2), dtype=np.int64)
        self.prev_actions = torch.full((num_envs, A), -1, dtype=torch.long, device=self.device)
        self._actions: np.ndarray | None = None
        self._closed = False

    # ------------------------------------------------------------------ library state -> arrays
    def _read_state(self, e: int) -> None:
        """Alive flags and positions of copy e's agents, from the game."""
        game = self.envs[e].unwrapped.env
        self.alive[e] = False
        for handle in self.envs[e].unwrapped.handles:
            ids = np.asarray(game.get_agent_id(handle))
            if len(ids):
                self.alive[e, ids] = True
                self.positions[e, ids] = np.asarray(game.get_pos(handle))

    def _reset_copy(self, e: int, seed: int | None) -> np.ndarray:
        obs, _ = self.envs[e].reset(seed=seed)
        out = np.zeros((self.n_agents, *self.obs_shape), dtype=np.float32)
        for i, agent in enumerate(self.names):
            out[i] = obs[agent]
        self._read_state(e)
        self.prev_actions[e] = -1
        return out

    def reset(self) -> torch.Tensor:
        obs = np.stack([self._reset_copy(e, self.seeds[e]) for e in range(self.num_envs)])
        return torch.as_tensor(obs, device=self.device)

    # ------------------------------------------------------------------ stepping
    def step_async(self, actions: torch.Tensor) -> None:
        self._actions = actions.cpu().numpy()

    def step_wait(self) -> VecStep:
        E, A = self.num_envs, self.n_agents
        actions, self._actions = self._actions, None
        next_obs = np.zeros((E, A, *self.obs_shape), dtype=np.float32)
        reward = np.zeros((E, A), dtype=np.float32)
        terminated = np.zeros((E, A), dtype=bool)
        truncated = np.zeros((E, A), dtype=bool)
        acted = self.alive.copy()
        ended = np.zeros(E, dtype=bool)
        kills = np.zeros((E, 2), dtype=np.float32)
        for e, env in enumerate(self.envs):
            living = env.agents
            obs, rew, term, trunc, _ = env.step({agent: int(actions[e, self.index[agent]]) for agent in living})
            for agent in living:
                i = self.index[agent]
                next_obs[e, i], reward[e, i], terminated[e, i], truncated[e, i] = obs[agent], rew[agent], term[agent], trunc[agent]
            self._read_state(e)
            survivors = [int(self.alive[e][self.team_index == t].sum()) for t in range(2)]
            if not env.agents or min(survivors) == 0:  # time is up, or one team is gone
                ended[e] = True
                terminated[e] |= acted[e] & ~truncated[e] & (min(survivors) == 0)
                kills[e] = [A // 2 - survivors[1], A // 2 - survivors[0]]  # red kills = blue dead
        self.prev_actions = torch.as_tensor(np.where(self.alive, actions, -1), device=self.device)
        next_state = self.global_state() if self.provide_state else None  # before the ended rounds reset
        obs = next_obs.copy()
        obs[~self.alive] = 0.0
        for e in np.flatnonzero(ended):
            obs[e] = self._reset_copy(e, None)
        info = {}
        if ended.any():
            red, blue = kills[:, 0], kills[:, 1]
            info = {
                "game/red_win": torch.as_tensor((red > blue).astype(np.float32)),
                "game/blue_win": torch.as_tensor((blue > red).astype(np.float32)),
                "game/draw": torch.as_tensor((red == blue).astype(np.float32)),
                "game/red_kills": torch.as_tensor(red), "game/blue_kills": torch.as_tensor(blue),
            }
            info = {k: v.to(self.device) for k, v in info.items()}
        dev = self.device
        return VecStep(
            obs=torch.as_tensor(obs, device=dev),
            next_obs=torch.as_tensor(next_obs, device=dev),
            reward=torch.as_tensor(reward, device=dev),
            terminated=torch.as_tensor(terminated, device=dev),
            truncated=torch.as_tensor(truncated, device=dev),
            alive=torch.as_tensor(acted, device=dev),
            episode_end=torch.as_tensor(ended, device=dev),
            episode_info=info,
            next_state=next_state,
        )

    def global_state(self) -> torch.Tensor:
        """[E, map, map, 5]: every copy's ``state()`` (the whole map as the library renders it for a critic)."""
        return torch.as_tensor(np.stack([library_state(env) for env in self.envs]), device=self.device)


    # ------------------------------------------------------------------ what mean-field algorithms read
    def context(self) -> dict:
        alive = torch.as_tensor(self.alive, device=self.device)
        positions = torch.as_tensor(self.positions, device=self.device)
        mask = neighbour_mask(positions, alive, self.team_of, self.view_radius)
        context = {"neighbours": MaskNeighbours(mask), "prev_actions": self.prev_actions.masked_fill(~alive, -1), "alive": alive}
        if self.provide_state:
            context["state"] = self.global_state()
        return context

    # ------------------------------------------------------------------ pictures
    def frame(self, index: int = 0) -> np.ndarray:
        """Copy ``index`` drawn by ``draw_battle``: its walls and its living agents."""
        self.check_copy(index)
        game = self.envs[index].unwrapped
        walls = np.asarray(game.env._get_walls_info()).reshape(-1, 2)  # (x, y) of every wall cell (magent2 has no public call)
        alive = self.alive[index]
        return draw_battle(game.map_size, walls, self.positions[index][alive], self.team_index[alive])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for env in self.envs:
                env.close()


def make_battle(cfg: BattleConfig, num_envs: int, num_workers: int, seed: int, device="cpu") -> BattleVecEnv:
    """battle_v4 copies stepped in this process (``num_workers`` is not used: the C++ game is fast)."""
    return BattleVecEnv(cfg, num_envs, seed, device)
