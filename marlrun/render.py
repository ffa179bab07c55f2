"""What every environment's pictures share, and animations of them (GIF, MP4, TensorBoard).

Each environment draws itself: ``env.frame(index)`` (part of the ``VecEnv`` contract) returns copy ``index`` in its
current state as an RGB uint8 array [H, W, 3], drawn with numpy only (no display needed), every frame of one
environment the same size; the environment's own module holds its painter. This module holds what those painters
share, and names no environment: the colours (RGB) and pixel helpers (``cells``: a colour grid as blocks of pixels;
``fill``: one grid cell; ``label_cell``: a count written in one; ``disc``: a filled circle), and ``captioned``, which
adds a strip with a line of text (step, return) and the environment's ``legend`` below a frame.

``write_animation(frames, path, fps)`` writes a ``.gif`` (Pillow) or ``.mp4`` (imageio + imageio-ffmpeg),
``add_animation_to_tensorboard(log_dir_or_writer, tag, frames, step, fps)`` adds an animated GIF image
summary to a run's TensorBoard event file.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import numpy as np
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard.writer import FileWriter

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


# ---------------------------------------------------------------------------- pixel helpers (for environments' frames)
def cells(colours: np.ndarray, cell_h: int, cell_w: int | None = None) -> np.ndarray:
    """Every entry of a [rows, cols, 3] colour grid as a cell_h x cell_w block of pixels."""
    return np.repeat(np.repeat(colours, cell_h, axis=0), cell_w or cell_h, axis=1)


def fill(img: np.ndarray, x: int, y: int, cell: int, colour, inset: int = 0) -> None:
    """Paint grid cell (x, y) (column x, row y) of an image made of cell x cell blocks, ``inset`` pixels in."""
    img[y * cell + inset : (y + 1) * cell - inset, x * cell + inset : (x + 1) * cell - inset] = colour


def label_cell(img: np.ndarray, x: int, y: int, cell: int, text: str, colour=WHITE) -> None:
    """Write ``text`` (a count: agents sharing grid cell (x, y)) in the middle of that cell."""
    from PIL import Image, ImageDraw

    block = Image.fromarray(np.ascontiguousarray(img[y * cell : (y + 1) * cell, x * cell : (x + 1) * cell]))
    draw = ImageDraw.Draw(block)
    left, top, right, bottom = draw.textbbox((0, 0), text)
    draw.text(((cell - (right - left)) / 2 - left, (cell - (bottom - top)) / 2 - top), text, fill=colour)
    img[y * cell : (y + 1) * cell, x * cell : (x + 1) * cell] = np.asarray(block)


def captioned(frame: np.ndarray, text: str, legend=()) -> np.ndarray:
    """``frame`` with a white strip below it: ``text`` (the step, time and return of an evaluation episode) and a
    legend, a small square of each colour with its name (``legend``: (name, RGB) pairs, the environment's ``legend``).
    Every frame given the same legend and a frame of the same size comes out the same size."""
    from PIL import Image, ImageDraw

    width = frame.shape[1]
    line = 12
    rows = [[]]
    x = 4
    for name, colour in legend:  # the legend wraps to as many lines as the frame's width needs
        needed = 12 + 6 * len(name) + 8
        if x + needed > width and rows[-1]:
            rows.append([])
            x = 4
        rows[-1].append((x, name, colour))
        x += needed
    strip = Image.new("RGB", (width, 4 + line * (1 + len(rows)) + 2), WHITE)
    draw = ImageDraw.Draw(strip)
    draw.text((4, 3), text, fill=BLACK)
    for r, row in enumerate(rows):
        top = 3 + line * (r + 1)
        for x, name, colour in row:
            draw.rectangle([x, top + 1, x + 8, top + 9], fill=tuple(int(c) for c in colour), outline=GREY)
            draw.text((x + 12, top), name, fill=BLACK)
    return np.concatenate([frame, np.asarray(strip, dtype=np.uint8)], axis=0)


def disc(img: np.ndarray, row: float, col: float, radius: float, colour) -> None:
    """Paint every pixel whose centre lies within ``radius`` of (row, col) (pixel units)."""
    rows, cols = np.ogrid[: img.shape[0], : img.shape[1]]
    img[(rows + 0.5 - row) ** 2 + (cols + 0.5 - col) ** 2 <= radius**2] = colour


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
    frames = _checked(frames)
    h, w = frames[0].shape[:2]
    image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=encode_gif(frames, fps))
    summary = Summary(value=[Summary.Value(tag=tag, image=image)])
    if isinstance(writer, (str, os.PathLike)):
        file_writer, own = FileWriter(str(writer)), True  # a new event file in that directory
    else:
        tb = getattr(writer, "tb", writer)
        file_writer, own = tb.file_writer, False  # the SummaryWriter's event file (it has no raw-summary call)
        if file_writer is None:  # a closed SummaryWriter: a new event file in its directory, as it would open
            file_writer, own = FileWriter(tb.get_logdir()), True
    try:
        file_writer.add_summary(summary, global_step=step)
        file_writer.flush()
    finally:
        if own:
            file_writer.close()
