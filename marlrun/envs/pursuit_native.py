"""A native, batched torch re-implementation of PettingZoo's SISL pursuit_v5.

``PursuitNative`` steps ``B`` independent pursuit games at once on one torch device, with all state (positions,
count grids, the random generator) on that device and no Python loop over games or agents in the hot path. It
reproduces ``pursuit_v5.parallel_env`` step for step (``tests/test_pursuit_native.py`` runs both in lockstep from
the same state with the same moves and demands identical observations, rewards and flags). What one parallel step
of the library does, and how it is reproduced here:

* The parallel wrapper steps the AEC env pursuer by pursuer. Pursuer ``i``'s AEC step moves it, then sets every
  pursuer's reward to ``tag_reward * (evaders on its 4 neighbour cells, clipped to the map) / n_pursuers`` for the
  positions at that moment, and the wrapper adds these rewards up. Pursuers do not interact when moving, so the
  sub-steps need no sequential simulation: pursuer ``k`` is seen ``k`` times at its old cell and ``n - k`` times
  at its new one. The sum is formed in float64 in the library's order (numpy's pairwise ``mean`` for the shared
  reward, then a left-to-right sum over the sub-steps), so rewards match to the last bit before the float32 cast.
  Clipping makes a pursuer on the border count the evaders on its own cell (twice in a corner).
* After the last pursuer has moved: evaders are caught (``surround``: every open neighbour cell -- 4 minus borders
  minus obstacle cells, with the library's ``need_to_surround`` that does not look at obstacles on row/column 0 --
  holds a pursuer; otherwise ``n_catch`` pursuers share its cell) and removed, every pursuer on a cell that
  caught an evader gets ``catch_reward`` (once, however many it caught), then the remaining evaders move at random
  (uniform over the 5 actions, stay included; ``freeze_evaders``: never), ``urgency_reward`` is added and the
  frame counter advances. The tag reward of that sub-step is computed before the catch and the evader moves.
* ``shared_reward`` mixes every sub-step's rewards as ``local_ratio * own + (1 - local_ratio) * mean``.
* Truncation (``frames >= max_cycles``) wins over termination (all evaders caught): on the step that reaches
  ``max_cycles`` the library reports truncated=True, terminated=False even if the last evader was just caught.
* Observations are taken after the evaders moved: an ``obs_range`` square around the pursuer, indexed
  ``[y, x, channel]`` (the library swaps axes), channels = obstacle (1 also outside the map), pursuer count, evader
  count; float32. For an even ``obs_range`` the library fills only ``obs_range - 1`` rows/columns; the last one
  reads as outside the map.
* Moves: action -> (dx, dy) = left (-1, 0), right (1, 0), (0, 1), (0, -1), stay; a move out of the map or into
  the obstacle (the library's ``rectangle_map``) is refused and the agent stays.
* Reset: a window of ``constraint_window`` of each side, placed uniformly, then pursuers and then evaders are put
  one after another uniformly on open cells of the window that are neither taken by nor 4-adjacent to an agent of
  the same kind (the library's rejection sampling, done here as a uniform draw over the allowed cells).

Where the library would crash or loop forever (``constraint_window`` too small for a cell, no room left for an
agent), the config refuses the settings for both backends (``PursuitConfig``); the simulator itself, built directly,
picks the window's first cell or relaxes the spacing rule instead.

``PursuitNativeVecEnv`` wraps the simulator behind the interface of ``PettingZooVecEnv`` (automatic reset,
``next_obs`` = true final observation). ``draw_pursuit`` draws one game (the frames of both backends).
"""

from __future__ import annotations

import dataclasses
import numpy as np
import torch

from marlrun.envs.base import EnvSpec, TensorVecEnv, VecStep
from marlrun.render import BLUE, FLOOR, GRID_LINE, RED, WALL, WHITE, cells, fill, label_cell

# DiscreteAgent.motion_range: action -> (dx, dy)
MOVES = ((-1, 0), (1, 0), (0, 1), (0, -1), (0, 0))
STAY = 4

PURSUIT_CELL = 24  # pixels per cell of a frame
VIEW_TINT = 0.15  # how much red a pursuer's observation window mixes into the free cells it covers


def pursuit_spec(cfg) -> EnvSpec:
    """What pursuit (``cfg``: a ``PursuitConfig``) is to an algorithm, on both backends."""
    return EnvSpec(
        name=cfg.name,
        agent_names=tuple(f"pursuer_{i}" for i in range(cfg.n_pursuers)),
        obs_shape=(cfg.obs_range, cfg.obs_range, 3),  # channels: obstacles, pursuer count, evader count
        n_actions=5,
        teams=("pursuer",) * cfg.n_pursuers,
        obs_storage_dtype=torch.uint8,  # 0/1 walls and small agent counts
    )


def draw_pursuit(building: np.ndarray, pursuers: np.ndarray, evaders: np.ndarray, obs_range: int) -> np.ndarray:
    """A frame of one pursuit game (both backends): the grid, obstacle dark, pursuers red, remaining evaders blue (a
    smaller square, so one sharing a pursuer's cell stays visible; a number on a cell: that many pursuers, or evaders,
    share it), each pursuer's observation window tinted faintly red. building [X, Y] bool (obstacle), pursuers and remaining evaders as (x, y) rows; x is the column."""
    walls = np.asarray(building, dtype=bool).T  # [Y, X]: row y, column x
    seen = np.zeros(walls.shape, dtype=bool)
    off = (obs_range - 1) // 2
    for x, y in pursuers:
        seen[max(y - off, 0) : y + off + 1, max(x - off, 0) : x + off + 1] = True
    tint = (1 - VIEW_TINT) * np.array(FLOOR) + VIEW_TINT * np.array(RED)
    colours = np.where(walls[..., None], WALL, np.where(seen[..., None], tint, FLOOR)).astype(np.uint8)
    c = PURSUIT_CELL
    img = cells(colours, c)
    edge = np.zeros(img.shape[:2], dtype=bool)  # a thin line at the last row and column of every free cell
    edge[c - 1 :: c] = edge[:, c - 1 :: c] = True
    img[edge & ~cells(walls, c)] = GRID_LINE
    for x, y in pursuers:
        fill(img, x, y, c, RED, inset=1)
    for x, y in evaders:
        fill(img, x, y, c, BLUE, inset=c // 4)
    for positions, colour in ((pursuers, WHITE), (evaders, WHITE)):  # agents that share a cell: how many
        where, counts = np.unique(np.asarray(positions).reshape(-1, 2), axis=0, return_counts=True)
        for (x, y), n in zip(where, counts):
            if n > 1:
                label_cell(img, int(x), int(y), c, str(n), colour)
    return img


def pursuit_legend(obs_range: int) -> tuple:
    """The colours of ``draw_pursuit``'s frames, named."""
    tint = tuple(int(v) for v in (1 - VIEW_TINT) * np.array(FLOOR) + VIEW_TINT * np.array(RED))
    return (("pursuer", RED), ("evader", BLUE), ("obstacle", WALL), (f"pursuers' view ({obs_range}x{obs_range})", tint))


def native_spec(cfg) -> EnvSpec:
    """The native backend's spec: pursuit_v5's, with the global state (the whole map, [y_size, x_size, 3])."""
    spec = pursuit_spec(cfg)
    return dataclasses.replace(spec, capabilities=spec.capabilities | {"state"}, state_shape=(cfg.y_size, cfg.x_size, 3))


def rectangle_map(x_size: int, y_size: int, xb: float = 0.3, yb: float = 0.2) -> np.ndarray:
    """The obstacle of pursuit_v5 (``two_d_maps.rectangle_map``): bool [x_size, y_size], True = obstacle."""
    fx = np.arange(x_size, dtype=np.float64) / x_size
    fy = np.arange(y_size, dtype=np.float64) / y_size
    in_x = (fx > xb) & (fx < 1.0 - xb)
    in_y = (fy > yb) & (fy < 1.0 - yb)
    return in_x[:, None] & in_y[None, :]


def numpy_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension in the order numpy's ``add.reduce`` uses for a contiguous float array
    (pairwise summation with 8 accumulators), so float64 results agree bit for bit."""
    n = x.shape[-1]
    if n < 8:
        res = torch.zeros_like(x[..., 0])
        for i in range(n):
            res = res + x[..., i]
        return res
    if n <= 128:
        r = x[..., :8]
        m = n - n % 8
        for i in range(8, m, 8):
            r = r + x[..., i : i + 8]
        res = ((r[..., 0] + r[..., 1]) + (r[..., 2] + r[..., 3])) + ((r[..., 4] + r[..., 5]) + (r[..., 6] + r[..., 7]))
        for i in range(m, n):
            res = res + x[..., i]
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return numpy_sum(x[..., :n2]) + numpy_sum(x[..., n2:])


class PursuitNative:
    """``num_games`` pursuit_v5 games stepped together on ``device``.

    Positions are kept as flat indices into a padded grid (``cell = (y + pad) * Wp + (x + pad)``); ``grid``
    [B, Hp * Wp * 3] holds the observation channels of every cell (obstacle/outside, pursuer count, evader count),
    updated incrementally as agents move, so observations are one ``index_select`` of window rows.
    """

    def __init__(self, num_games: int, *, x_size: int, y_size: int, n_pursuers: int, n_evaders: int, obs_range: int, n_catch: int,
                 freeze_evaders: bool, surround: bool, shared_reward: bool, tag_reward: float, catch_reward: float,
                 urgency_reward: float, constraint_window: float, max_cycles: int, device: torch.device | str = "cpu", seed: int | None = 0):
        if n_pursuers < 1 or n_evaders < 0 or x_size < 1 or y_size < 1 or obs_range < 1:
            raise ValueError("pursuit needs at least one pursuer, a non-empty map and obs_range >= 1")
        self.B, self.X, self.Y = int(num_games), int(x_size), int(y_size)
        self.P, self.N = int(n_pursuers), int(n_evaders)
        self.R, self.n_catch, self.max_cycles = int(obs_range), int(n_catch), int(max_cycles)
        self.freeze_evaders, self.surround = bool(freeze_evaders), bool(surround)
        self.local_ratio = 1.0 - float(shared_reward)
        self.tag_reward, self.catch_reward, self.urgency_reward = float(tag_reward), float(catch_reward), float(urgency_reward)
        self.constraint_window = float(constraint_window)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self._build_tables()
        B, dev = self.B, self.device
        self.pcell = torch.zeros(B, self.P, dtype=torch.long, device=dev)
        self.ecell = torch.zeros(B, self.N, dtype=torch.long, device=dev)
        self.active = torch.zeros(B, self.N, dtype=torch.bool, device=dev)
        self.frames = torch.zeros(B, dtype=torch.long, device=dev)
        self.grid = self.static.expand(B, -1).clone()
        self.reset()

    # ------------------------------------------------------------------ static tables
    def _build_tables(self) -> None:
        X, Y, R, dev = self.X, self.Y, self.R, self.device
        self.off = (R - 1) // 2  # the library's obs_offset
        self.W = 2 * self.off + 1  # rows/columns the library fills (R, or R - 1 when R is even)
        self.pad = pad = max(self.off, 1)
        self.Wp, self.Hp = Wp, Hp = X + 2 * pad, Y + 2 * pad
        self.building = rectangle_map(X, Y)  # [X, Y] numpy bool
        xs, ys = np.meshgrid(np.arange(X), np.arange(Y), indexing="ij")  # [X, Y]
        cells = (ys + pad) * Wp + (xs + pad)  # padded flat index of every map cell
        self._cells_xy = torch.as_tensor(cells.reshape(-1), device=dev)  # map flat (x * Y + y) -> cell

        free = np.zeros(Hp * Wp, dtype=bool)
        free[cells.reshape(-1)] = ~self.building.reshape(-1)
        self.free = torch.as_tensor(free, device=dev)  # an agent may stand here
        static = np.zeros((Hp * Wp, 3), dtype=np.float32)
        static[:, 0] = (~free).astype(np.float32)  # |map| is 1 on the obstacle; the library pads with 1
        self.static = torch.as_tensor(static.reshape(-1), device=dev)

        self.delta = torch.tensor([dx + dy * Wp for dx, dy in MOVES], device=dev)  # action -> cell offset

        # reward(): the 4 neighbours (x-1, y), (x+1, y), (x, y+1), (x, y-1), each clipped into the map
        nbr = np.zeros((Hp * Wp, 4), dtype=np.int64)
        for k, (dx, dy) in enumerate(((-1, 0), (1, 0), (0, 1), (0, -1))):
            nx, ny = np.clip(xs + dx, 0, X - 1), np.clip(ys + dy, 0, Y - 1)
            nbr[cells.reshape(-1), k] = ((ny + pad) * Wp + (nx + pad)).reshape(-1)
        self.tag_nbr = torch.as_tensor(nbr * 3 + 2, device=dev)  # -> evader-count channel of the grid

        # need_to_surround(x, y), with the library's test `not 0 < xn < x_size` that skips row/column 0
        need = np.full((X, Y), 4, dtype=np.int64)
        need -= ((xs == 0) | (xs == X - 1)).astype(np.int64)
        need -= ((ys == 0) | (ys == Y - 1)).astype(np.int64)
        for dx, dy in ((-1, 0), (1, 0), (0, 1), (0, -1)):
            nx, ny = xs + dx, ys + dy
            looked = (nx > 0) & (nx < X) & (ny > 0) & (ny < Y)
            need -= (looked & self.building[np.clip(nx, 0, X - 1), np.clip(ny, 0, Y - 1)]).astype(np.int64)
        need_cells = np.full(Hp * Wp, -1, dtype=np.int64)
        need_cells[cells.reshape(-1)] = need.reshape(-1)
        self.need = torch.as_tensor(need_cells, device=dev)
        self.sur_delta = torch.tensor([-1, 1, Wp, -Wp], device=dev)  # surround_mask, unclipped

        # observation window: row i holds cells (x - off .. x + off, y - off + i), 3 channels each, contiguous
        self.window_rows = torch.as_tensor((np.arange(self.W) - self.off) * Wp - self.off, device=dev)

        # reset: the agents an agent may not stand next to are marked in a grid with a border of 1 (expanded_mat)
        self._exp_cells = torch.as_tensor(((xs + 1) * (Y + 2) + (ys + 1)).reshape(-1), device=dev)
        self._exp_mark = torch.tensor([0, Y + 2, -(Y + 2), 1, -1], device=dev)
        self._open_xy = torch.as_tensor(~self.building.reshape(-1), device=dev)  # map flat x * Y + y
        self._x_of = torch.as_tensor(xs.reshape(-1), device=dev)
        self._y_of = torch.as_tensor(ys.reshape(-1), device=dev)

    # ------------------------------------------------------------------ helpers
    def _ids(self, env_ids) -> torch.Tensor:
        if env_ids is None:
            return torch.arange(self.B, device=self.device)
        ids = torch.as_tensor(env_ids, device=self.device)
        if ids.dtype == torch.bool:
            ids = ids.nonzero().squeeze(1)
        return ids.long().reshape(-1)

    def _to_cell(self, pos: torch.Tensor) -> torch.Tensor:
        pos = torch.as_tensor(pos, device=self.device).long()
        return (pos[..., 1] + self.pad) * self.Wp + (pos[..., 0] + self.pad)

    def _to_xy(self, cell: torch.Tensor) -> torch.Tensor:
        return torch.stack([cell % self.Wp - self.pad, cell // self.Wp - self.pad], dim=-1)

    def _rebuild_grid(self, ids: torch.Tensor) -> None:
        k = ids.numel()
        g = self.static.expand(k, -1).clone()
        pc, ec, act = self.pcell[ids], self.ecell[ids], self.active[ids]
        g.scatter_add_(1, pc * 3 + 1, torch.ones(pc.shape, device=self.device))
        g.scatter_add_(1, ec * 3 + 2, act.to(torch.float32))
        self.grid[ids] = g

    # ------------------------------------------------------------------ state
    def reset(self, env_ids=None) -> None:
        """Random initial placement (the library's distribution) of the games ``env_ids`` (all by default)."""
        ids = self._ids(env_ids)
        k = ids.numel()
        if k == 0:
            return
        dev, X, Y, cw = self.device, self.X, self.Y, self.constraint_window
        start = torch.rand(k, 2, dtype=torch.float64, device=dev, generator=self.generator) * (1.0 - cw)
        size = torch.tensor([X, Y], dtype=torch.float64, device=dev)
        lo = torch.floor(size * start).long()
        hi = torch.floor(size * (start + cw)).long()
        lo = torch.minimum(lo, size.long() - 1).clamp(min=0)
        hi = torch.maximum(torch.minimum(hi, size.long()), lo + 1)  # the library fails on an empty window
        in_win = ((self._x_of >= lo[:, :1]) & (self._x_of < hi[:, :1]) & (self._y_of >= lo[:, 1:]) & (self._y_of < hi[:, 1:]))
        allowed = in_win & self._open_xy  # [k, X * Y]
        self.pcell[ids] = self._place(allowed, in_win, self.P)
        self.ecell[ids] = self._place(allowed, in_win, self.N)
        self.active[ids] = True
        self.frames[ids] = 0
        self._rebuild_grid(ids)

    def _place(self, allowed: torch.Tensor, in_win: torch.Tensor, n: int) -> torch.Tensor:
        """create_agents(randinit=True): n agents one after another, each uniform over the allowed cells that no
        earlier agent of the batch occupies or touches (4-neighbourhood)."""
        k = allowed.shape[0]
        cells = torch.zeros(k, n, dtype=torch.long, device=self.device)
        blocked = torch.zeros(k, (self.X + 2) * (self.Y + 2), dtype=torch.bool, device=self.device)
        rows = torch.arange(k, device=self.device)[:, None]
        for a in range(n):
            ok = allowed & ~blocked[:, self._exp_cells]
            u = torch.rand(k, self.X * self.Y, device=self.device, generator=self.generator)
            # uniform over the allowed cells; if none is left (the library would loop forever) over the window
            score = u + 2.0 * ok + 1.0 * (in_win & self._open_xy)
            flat = score.argmax(1)  # x * Y + y
            cells[:, a] = self._cells_xy[flat]
            blocked[rows, self._exp_cells[flat][:, None] + self._exp_mark] = True
        return cells

    def set_state(self, pursuer_pos, evader_pos, evader_active, frames, env_ids=None) -> None:
        """Put games ``env_ids`` (all by default) into a given state: positions [k, P, 2] and [k, N, 2] as (x, y),
        evader_active [k, N] bool (inactive evaders = caught; their positions are ignored), frames [k]."""
        ids = self._ids(env_ids)
        k, dev = ids.numel(), self.device
        pp = torch.as_tensor(pursuer_pos, device=dev).long().reshape(k, self.P, 2)
        ep = torch.as_tensor(evader_pos, device=dev).long().reshape(k, self.N, 2)
        act = torch.as_tensor(evader_active, device=dev).bool().reshape(k, self.N)
        size = torch.tensor([self.X, self.Y], device=dev)
        pc, ec = self._to_cell(pp.clamp(min=0).minimum(size - 1)), self._to_cell(ep.clamp(min=0).minimum(size - 1))
        if not bool((((pp >= 0) & (pp < size)).all(-1) & self.free[pc]).all()):
            raise ValueError("a pursuer outside the map or on the obstacle")
        if not bool((((ep >= 0) & (ep < size)).all(-1) & self.free[ec] | ~act).all()):
            raise ValueError("an evader outside the map or on the obstacle")
        self.pcell[ids] = pc
        self.ecell[ids] = torch.where(act, ec, self._cells_xy[0])
        self.active[ids] = act
        self.frames[ids] = torch.as_tensor(frames, device=self.device).long().reshape(k)
        self._rebuild_grid(ids)

    def get_state(self) -> dict[str, torch.Tensor]:
        """Positions as (x, y): pursuer_pos [B, P, 2], evader_pos [B, N, 2], evader_active [B, N], frames [B]."""
        return dict(pursuer_pos=self._to_xy(self.pcell), evader_pos=self._to_xy(self.ecell),
                    evader_active=self.active.clone(), frames=self.frames.clone())

    # ------------------------------------------------------------------ observation
    def global_state(self, env_ids=None) -> torch.Tensor:
        """The library's ``state()`` of games ``env_ids`` (all by default): [k, Y, X, 3] float32, the observation
        channels (obstacle, pursuer count, evader count) over the whole map."""
        grid = self.grid if env_ids is None else self.grid[self._ids(env_ids)]
        p = self.pad
        return grid.view(-1, self.Hp, self.Wp, 3)[:, p : p + self.Y, p : p + self.X].contiguous()

    def observe(self, env_ids=None) -> torch.Tensor:
        """Observations [k, P, R, R, 3] float32 of games ``env_ids`` (all by default)."""
        if env_ids is None:
            grid, pc = self.grid, self.pcell
        else:
            ids = self._ids(env_ids)
            grid, pc = self.grid[ids], self.pcell[ids]
        k, W, R = pc.shape[0], self.W, self.R
        if k == 0:
            return torch.zeros(0, self.P, R, R, 3, device=self.device)
        # every run of W cells (W * 3 floats) of the flat grid is a row of the view; windows stay inside their game
        rows = grid.view(-1).unfold(0, W * 3, 3)
        first = (torch.arange(k, device=self.device) * (self.Hp * self.Wp)).unsqueeze(1) + pc  # [k, P]
        obs = rows.index_select(0, (first.unsqueeze(-1) + self.window_rows).view(-1)).view(k, self.P, W, W, 3)
        if W == R:
            return obs
        out = torch.zeros(k, self.P, R, R, 3, device=self.device)  # even obs_range: last row/column is padding
        out[..., 0] = 1.0
        out[:, :, :W, :W] = obs
        return out

    # ------------------------------------------------------------------ dynamics
    def random_evader_actions(self) -> torch.Tensor:
        if self.freeze_evaders:  # SingleActionPolicy(4)
            return torch.full((self.B, self.N), STAY, dtype=torch.long, device=self.device)
        return torch.randint(0, len(MOVES), (self.B, self.N), device=self.device, generator=self.generator)

    def _tag_counts(self, cells: torch.Tensor) -> torch.Tensor:
        """Evaders on the 4 map-clipped neighbour cells of each cell in ``cells`` [B, P] -> [B, P] float64."""
        where = self.tag_nbr[cells].view(self.B, -1)  # [B, P * 4] indices of evader counts in the grid
        return self.grid.gather(1, where).view(self.B, self.P, 4).to(torch.float64).sum(-1)

    def step(self, pursuer_actions: torch.Tensor, evader_actions: torch.Tensor | None = None):
        """One parallel step of every game: (obs [B, P, R, R, 3], reward float32 [B, P], terminated [B, P],
        truncated [B, P]). ``evader_actions`` [B, N] replaces the evaders' random moves (caught evaders ignore theirs)."""
        B, dev = self.B, self.device
        rows = torch.arange(B, device=dev)[:, None]
        ones_p = torch.ones(B, self.P, device=dev)

        # pursuers move (a move off the map or into the obstacle is refused); the tag reward of every sub-step
        old = self.pcell
        target = old + self.delta[pursuer_actions.long()]
        new = torch.where(self.free[target], target, old)
        counts = torch.stack([self._tag_counts(old), self._tag_counts(new)], dim=1)  # [B, 2, P]
        self.grid.scatter_add_(1, old * 3 + 1, -ones_p)
        self.grid.scatter_add_(1, new * 3 + 1, ones_p)
        self.pcell = new

        # catches, against the evaders' positions before they move
        occupied = self.grid.view(B, -1, 3)[..., 1] > 0  # [B, cells]: a pursuer stands here
        if self.surround:
            around = self.ecell.unsqueeze(-1) + self.sur_delta  # [B, N, 4] the unclipped neighbour cells
            held = occupied.gather(1, around.view(B, -1)).view(B, self.N, 4)
            caught = self.active & (held.sum(-1) == self.need[self.ecell])
            # catchers: pursuers standing on a neighbour cell of a caught evader
            catch_cells = torch.zeros_like(occupied)
            catch_cells[rows.expand(-1, self.N * 4)[(caught.unsqueeze(-1) & held).view(B, -1)],
                        around.view(B, -1)[(caught.unsqueeze(-1) & held).view(B, -1)]] = True
        else:
            on_cell = self.grid.view(B, -1, 3)[..., 1].gather(1, self.ecell)
            caught = self.active & (on_cell >= self.n_catch)
            catch_cells = torch.zeros_like(occupied)
            catch_cells[rows.expand(-1, self.N)[caught], self.ecell[caught]] = True
        catcher = catch_cells.gather(1, self.pcell)  # [B, P]
        self.grid.scatter_add_(1, self.ecell * 3 + 2, -caught.to(torch.float32))
        self.active = self.active & ~caught

        # the remaining evaders move at random (or as given)
        moves = self.random_evader_actions() if evader_actions is None else torch.as_tensor(evader_actions, device=dev).long()
        target = self.ecell + self.delta[moves]
        moved = torch.where(self.free[target] & self.active, target, self.ecell)
        live = self.active.to(torch.float32)
        self.grid.scatter_add_(1, self.ecell * 3 + 2, -live)
        self.grid.scatter_add_(1, moved * 3 + 2, live)
        self.ecell = moved

        reward = self._reward(counts, catcher).to(torch.float32)
        self.frames += 1
        truncated = (self.frames >= self.max_cycles).unsqueeze(1).expand(B, self.P)
        terminated = (~self.active.any(1)).unsqueeze(1).expand(B, self.P) & ~truncated  # truncation wins, as in the library
        return self.observe(), reward, terminated.clone(), truncated.clone()

    def _reward(self, counts: torch.Tensor, catcher: torch.Tensor) -> torch.Tensor:
        """The sum over the P AEC sub-steps of the rewards the library hands every pursuer, in float64."""
        n = self.P
        tag = (self.tag_reward * counts) / n  # [B, 2, P]: at the old cell, at the new cell
        before, after = tag[:, 0], tag[:, 1]
        last = (after + self.catch_reward * catcher.to(torch.float64)) + self.urgency_reward
        k = torch.arange(n, device=self.device)
        moved = k[None, :] <= k[:, None]  # [sub-step i, pursuer k]: k has moved by sub-step i
        x = torch.where(moved, after.unsqueeze(1), before.unsqueeze(1))  # [B, i, k]
        x[:, n - 1] = last
        mean = numpy_sum(x) / n  # [B, i]
        r = self.local_ratio * x + (1 - self.local_ratio) * mean.unsqueeze(-1)
        total = r[:, 0]
        for i in range(1, n):
            total = total + r[:, i]
        return total


def pettingzoo_state(env) -> dict[str, np.ndarray]:
    """The state of a pursuit_v5 env (parallel, AEC or the base ``Pursuit``) in ``PursuitNative.set_state``'s
    terms: pursuer_pos [P, 2], evader_pos [N, 2] (0 for caught evaders), evader_active [N], frames."""
    base = getattr(env, "unwrapped", env)  # parallel / AEC wrappers -> raw_env
    base = getattr(base, "env", base) if not hasattr(base, "evaders_gone") else base  # raw_env -> Pursuit
    active = ~np.asarray(base.evaders_gone, dtype=bool)
    pursuers = np.array([np.asarray(a.current_position()) for a in base.pursuer_layer.allies], dtype=np.int64).reshape(-1, 2)
    evaders = np.zeros((base.n_evaders, 2), dtype=np.int64)
    remaining = [np.asarray(a.current_position()) for a in base.evader_layer.allies]
    if remaining:
        evaders[active] = np.array(remaining, dtype=np.int64)
    return dict(pursuer_pos=pursuers, evader_pos=evaders, evader_active=active, frames=int(base.frames))


class PursuitNativeVecEnv(TensorVecEnv):
    """``num_envs`` pursuit_v5 games as one batched environment, simulated natively in torch on ``device``.

    Same interface as ``PettingZooVecEnv``; one generator seeded from ``seed`` drives every copy (copies draw
    different numbers from it, so they are independent; the same seed replays the same run on the same device).
    Every step returns new tensors; ``obs`` and ``next_obs`` are one tensor where no copy ended (read-only use).
    """

    def __init__(self, cfg, num_envs: int, seed: int, device: torch.device | str = "cpu"):
        """``cfg``: a ``PursuitConfig`` (marlrun/envs/pursuit.py)."""
        self.cfg = cfg
        self.spec: EnvSpec = native_spec(cfg)
        self.num_envs, self.n_agents, self.device = num_envs, self.spec.n_agents, torch.device(device)
        self.sim_seed = int(np.random.SeedSequence([seed, 0x5EED]).generate_state(1)[0])  # well-mixed, and not copy_seed's
        self.sim = PursuitNative(num_envs, device=self.device, seed=self.sim_seed, **cfg.library_kwargs())
        self._closed = False

    def reset(self) -> torch.Tensor:
        """Every copy from its start, the generator re-seeded: each reset replays the same games (as PettingZoo's
        copies do when reset with their seeds), so every evaluation sees the same starts."""
        self.sim.generator.manual_seed(self.sim_seed)
        self.sim.reset()
        return self.sim.observe()

    def step_wait(self) -> VecStep:
        actions = self.take_actions()
        next_obs, reward, terminated, truncated = self.sim.step(actions)
        next_state = self.sim.global_state() if self.provide_state else None  # before the ended games reset
        done = terminated[:, 0] | truncated[:, 0]
        obs = next_obs  # the same tensor where no copy ended (neither is ever written to after it is returned)
        ended = done.nonzero().squeeze(1)
        if ended.numel():  # one device sync per step
            self.sim.reset(ended)
            obs = next_obs.index_copy(0, ended, self.sim.observe(ended))
        return VecStep(
            obs=obs,
            next_obs=next_obs,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            alive=torch.ones(self.num_envs, self.n_agents, dtype=torch.bool, device=self.device),
            episode_end=done,
            episode_info=self.episode_metrics(next_obs) if ended.numel() else {},
            next_state=next_state,
        )

    def context(self) -> dict:
        return {"state": self.sim.global_state()} if self.provide_state else {}

    @property
    def legend(self) -> tuple:
        return pursuit_legend(self.sim.R)

    def frame(self, index: int = 0) -> np.ndarray:
        """Copy ``index`` drawn by ``draw_pursuit``."""
        self.check_copy(index)
        state = {k: v[index].cpu().numpy() for k, v in self.sim.get_state().items()}
        return draw_pursuit(self.sim.building, state["pursuer_pos"], state["evader_pos"][state["evader_active"]], self.sim.R)

    def close(self) -> None:
        self._closed = True
