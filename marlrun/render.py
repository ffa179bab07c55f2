"""Pictures of marlrun's batched environments, and animations of them (GIF, MP4, TensorBoard).

``frame(env, index)`` draws copy ``index`` of an environment in its current state as an RGB uint8 array
[H, W, 3], with numpy only (no display needed); every frame of one environment has the same size.
``write_animation(frames, path, fps)`` writes a ``.gif`` (Pillow) or ``.mp4`` (imageio + imageio-ffmpeg),
``add_animation_to_tensorboard(log_dir_or_writer, tag, frames, step, fps)`` adds an animated GIF image
summary to a run's TensorBoard event file.

What is drawn: pursuit (both backends) as its grid, obstacle dark, pursuers red, remaining evaders blue (a smaller
square, so one sharing a pursuer's cell stays visible), each pursuer's observation window tinted faintly red;
simple_adversary (any MPE world) as discs on the square [-VIEW, VIEW]^2 (y up), landmarks grey, the target
landmark green, the adversary red, good agents blue; battle as its map, walls dark, living red and blue agents;
Ising as one block of pixels per spin, up white, down black (a ring is one row of blocks, at least 32 pixels tall).
"""

from __future__ import annotations

import io
import os
import sys
import uuid
from pathlib import Path

import numpy as np

from marlrun.errors import UserError

# colours (RGB)
FLOOR = (235, 235, 235)
GRID_LINE = (205, 205, 205)
WALL = (60, 60, 60)
RED = (220, 40, 40)
BLUE = (40, 80, 220)
GREEN = (40, 160, 60)
GREY = (130, 130, 130)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
VIEW_TINT = 0.15  # how much red a pursuer's observation window mixes into the free cells it covers

PURSUIT_CELL = 24  # pixels per pursuit cell
BATTLE_SIZE = 480  # about this many pixels per side of a battle map (at least 2 per cell)
MPE_VIEW, MPE_SIZE = 1.5, 400  # simple_adversary: the square [-1.5, 1.5]^2 in 400 x 400 pixels
ISING_SIZE, RING_HEIGHT = 256, 32  # a 2D lattice about 256 pixels wide; a ring at least 32 pixels tall

SUPPORTED = "pursuit, simple_adversary (MPE), battle and ising"


# ---------------------------------------------------------------------------- frames
def frame(env, index: int = 0) -> np.ndarray:
    """A picture (uint8 [H, W, 3]) of copy ``index`` of ``env`` as it is now."""
    if not 0 <= index < getattr(env, "num_envs", 1):
        raise IndexError(f"copy {index} of an environment with {env.num_envs} copies")
    if _is(env, "marlrun.envs.pursuit_native", "PursuitNativeVecEnv"):
        return _native_pursuit(env.sim, index)
    if _is(env, "marlrun.envs.ising", "IsingVecEnv"):
        return draw_ising(env.spins()[index].cpu().numpy(), env.dims, env.L)
    if _is(env, "marlrun.envs.battle", "BattleVecEnv"):
        return _battle(env, index)
    if _is(env, "marlrun.envs.vector", "PettingZooVecEnv"):
        raw = _in_process_copy(env, index)
        if hasattr(raw, "world"):
            return draw_mpe(raw.world)
        if hasattr(getattr(raw, "env", raw), "evaders_gone"):
            return _pettingzoo_pursuit(raw)
    name = getattr(getattr(env, "spec", None), "name", "?")
    raise UserError(f"cannot draw {type(env).__name__} (env {name!r}): marlrun.render draws {SUPPORTED} environments")


def _is(obj, module: str, cls: str) -> bool:
    """isinstance against a class of a module, without importing it (an instance's module is loaded already)."""
    mod = sys.modules.get(module)
    return mod is not None and isinstance(obj, getattr(mod, cls))


def _in_process_copy(env, index: int):
    """The unwrapped PettingZoo env of copy ``index`` of a ``PettingZooVecEnv`` stepped in this process."""
    copies = getattr(env._vec, "vec_envs", None)  # SuperSuit's ConcatVecEnv: MarkovVectorEnv copies
    if copies is None:
        raise UserError(f"cannot draw {env.spec.name}: its copies run in worker processes; use hardware.env_workers=0")
    return copies[index].par_env.unwrapped


def _cells(colours: np.ndarray, cell_h: int, cell_w: int | None = None) -> np.ndarray:
    """Every entry of a [rows, cols, 3] colour grid as a cell_h x cell_w block of pixels."""
    return np.repeat(np.repeat(colours, cell_h, axis=0), cell_w or cell_h, axis=1)


def _fill(img: np.ndarray, x: int, y: int, cell: int, colour, inset: int = 0) -> None:
    """Paint grid cell (x, y) (column x, row y) of an image made of cell x cell blocks, ``inset`` pixels in."""
    img[y * cell + inset : (y + 1) * cell - inset, x * cell + inset : (x + 1) * cell - inset] = colour


def draw_pursuit(building: np.ndarray, pursuers: np.ndarray, evaders: np.ndarray, obs_range: int) -> np.ndarray:
    """building [X, Y] bool (obstacle), pursuers and remaining evaders as (x, y) rows; x is the column."""
    walls = np.asarray(building, dtype=bool).T  # [Y, X]: row y, column x
    seen = np.zeros(walls.shape, dtype=bool)
    off = (obs_range - 1) // 2
    for x, y in pursuers:
        seen[max(y - off, 0) : y + off + 1, max(x - off, 0) : x + off + 1] = True
    tint = (1 - VIEW_TINT) * np.array(FLOOR) + VIEW_TINT * np.array(RED)
    colours = np.where(walls[..., None], WALL, np.where(seen[..., None], tint, FLOOR)).astype(np.uint8)
    c = PURSUIT_CELL
    img = _cells(colours, c)
    edge = np.zeros(img.shape[:2], dtype=bool)  # a thin line at the last row and column of every free cell
    edge[c - 1 :: c] = edge[:, c - 1 :: c] = True
    img[edge & ~_cells(walls, c)] = GRID_LINE
    for x, y in pursuers:
        _fill(img, x, y, c, RED, inset=1)
    for x, y in evaders:
        _fill(img, x, y, c, BLUE, inset=c // 4)
    return img


def _native_pursuit(sim, index: int) -> np.ndarray:
    state = {k: v[index].cpu().numpy() for k, v in sim.get_state().items()}
    return draw_pursuit(sim.building, state["pursuer_pos"], state["evader_pos"][state["evader_active"]], sim.R)


def _pettingzoo_pursuit(raw) -> np.ndarray:
    from marlrun.envs.pursuit_native import pettingzoo_state

    base = getattr(raw, "env", raw)  # raw_env -> Pursuit
    state = pettingzoo_state(raw)
    building = np.asarray(base.map_matrix) == -1  # [X, Y], -1 = obstacle
    return draw_pursuit(building, state["pursuer_pos"], state["evader_pos"][state["evader_active"]], base.obs_range)


def _disc(img: np.ndarray, row: float, col: float, radius: float, colour) -> None:
    rows, cols = np.ogrid[: img.shape[0], : img.shape[1]]
    img[(rows + 0.5 - row) ** 2 + (cols + 0.5 - col) ** 2 <= radius**2] = colour


def mpe_pixel(pos) -> tuple[float, float]:
    """(row, column) in an MPE frame of the world position (x, y)."""
    scale = MPE_SIZE / (2 * MPE_VIEW)
    return (MPE_VIEW - pos[1]) * scale, (pos[0] + MPE_VIEW) * scale


def draw_mpe(world) -> np.ndarray:
    """Agents under landmarks (smaller, so both stay visible): adversaries red, others blue; the target green."""
    img = np.full((MPE_SIZE, MPE_SIZE, 3), WHITE, dtype=np.uint8)
    scale = MPE_SIZE / (2 * MPE_VIEW)
    goal = getattr(world.agents[-1], "goal_a", None) if world.agents else None
    for agent in world.agents:
        colour = RED if getattr(agent, "adversary", False) else BLUE
        _disc(img, *mpe_pixel(agent.state.p_pos), agent.size * scale, colour)
    for landmark in world.landmarks:
        _disc(img, *mpe_pixel(landmark.state.p_pos), landmark.size * scale, GREEN if landmark is goal else GREY)
    return img


def battle_cell(map_size: int) -> int:
    return max(2, BATTLE_SIZE // map_size)


def _battle(env, index: int) -> np.ndarray:
    game = env.envs[index].unwrapped
    walls = np.asarray(game.env._get_walls_info()).reshape(-1, 2)  # (x, y) of every wall cell
    alive = env.alive[index]
    return draw_battle(game.map_size, walls, env.positions[index][alive], env.team_index[alive])


def draw_battle(map_size: int, walls: np.ndarray, positions: np.ndarray, teams: np.ndarray) -> np.ndarray:
    """walls and agent positions as (x, y) rows, x the column; teams 0 (red) or 1 (blue) of each agent."""
    colours = np.full((map_size, map_size, 3), FLOOR, dtype=np.uint8)
    colours[walls[:, 1], walls[:, 0]] = WALL
    colours[positions[:, 1], positions[:, 0]] = np.where(np.asarray(teams)[:, None] == 0, RED, BLUE)
    return _cells(colours, battle_cell(map_size))


def ising_cell(dims: int, L: int) -> int:
    return max(1, (2 * ISING_SIZE if dims == 1 else ISING_SIZE) // L)


def draw_ising(spins: np.ndarray, dims: int, L: int) -> np.ndarray:
    """Spins [L ** dims] (+-1; 2D: site x * L + y is row x, column y): up white, down black."""
    up = np.asarray(spins).reshape((1, L) if dims == 1 else (L, L)) > 0
    colours = np.where(up[..., None], WHITE, BLACK).astype(np.uint8)
    cell = ising_cell(dims, L)
    return _cells(colours, max(cell, RING_HEIGHT) if dims == 1 else cell, cell)


# ---------------------------------------------------------------------------- animations
def _checked(frames) -> list[np.ndarray]:
    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ValueError("no frames to animate")
    shape = frames[0].shape
    if len(shape) != 3 or shape[2] != 3 or any(f.shape != shape or f.dtype != np.uint8 for f in frames):
        found = sorted({(f.shape, str(f.dtype)) for f in frames})
        raise ValueError(f"frames must all be uint8 [H, W, 3] of one size; got {found}")
    return frames


def encode_gif(frames, fps: int = 10) -> bytes:
    """An animated GIF (loops forever) of uint8 [H, W, 3] frames. GIF delays are whole hundredths of a second, at
    least 0.02 s; Pillow merges identical consecutive frames into one shown as long."""
    from PIL import Image

    frames = _checked(frames)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    images = [Image.fromarray(f, "RGB") for f in frames]
    buffer = io.BytesIO()
    duration = max(20, round(1000 / fps))  # milliseconds per frame
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return buffer.getvalue()


def _write_mp4(frames: list[np.ndarray], path: Path, fps: int) -> None:
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        raise UserError('writing .mp4 needs imageio and imageio-ffmpeg: pip install "marlrun[video]" (or use a .gif path)') from None
    h, w = frames[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))  # yuv420p needs even sides
    with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
                            macro_block_size=1, ffmpeg_log_level="error") as writer:
        for f in frames:
            writer.append_data(np.pad(f, pad, mode="edge"))


def write_animation(frames, path, fps: int = 10) -> Path:
    """Write frames (uint8 [H, W, 3], one size) to ``path``: ``.gif`` (Pillow) or ``.mp4`` (H.264, yuv420p; needs
    ``marlrun[video]``). Written to a temporary file beside ``path`` and moved over it, so ``path`` is either the old
    file or the whole new one."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise UserError(f"cannot write an animation to {path}: use a .gif or .mp4 path")
    frames = _checked(frames)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        if suffix == ".gif":
            tmp.write_bytes(encode_gif(frames, fps))
        else:
            _write_mp4(frames, tmp, fps)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def add_animation_to_tensorboard(writer, tag: str, frames, step: int, fps: int = 10) -> None:
    """Add ``frames`` as an animated GIF image summary at ``step`` to a TensorBoard run and flush it.

    ``writer``: a log directory (a new event file is written there), a ``torch.utils.tensorboard.SummaryWriter``,
    or anything with one as ``.tb`` (marlrun's ``MetricWriter``)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    frames = _checked(frames)
    h, w = frames[0].shape[:2]
    image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=encode_gif(frames, fps))
    summary = Summary(value=[Summary.Value(tag=tag, image=image)])
    own = isinstance(writer, (str, os.PathLike))
    if own:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(log_dir=str(writer))
    else:
        tb = getattr(writer, "tb", writer)
    try:
        tb._get_file_writer().add_summary(summary, global_step=step)  # SummaryWriter has no public raw-summary call
        tb.flush()
    finally:
        if own:
            tb.close()
