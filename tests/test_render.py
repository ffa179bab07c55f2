"""Frames of every environment kind (each draws itself: ``env.frame(index)``) and the animations written from them."""

import ast
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from marlrun import render
from marlrun.envs.base import EnvSpec, VecEnv
from marlrun.envs.battle import BattleConfig, battle_cell, make_battle
from marlrun.envs.ising import RING_HEIGHT, IsingConfig, IsingVecEnv, ising_cell
from marlrun.envs.pursuit import PursuitConfig, make_pursuit
from marlrun.envs.pursuit_native import PURSUIT_CELL, PursuitNativeVecEnv, pettingzoo_state
from marlrun.envs.simple_adversary import MPE_SIZE, MPE_VIEW, SimpleAdversaryConfig, make_simple_adversary
from marlrun.errors import UserError
from marlrun.runner import make_env

PURSUIT = dict(x_size=10, y_size=8, n_pursuers=3, n_evaders=4, obs_range=7, n_catch=2, freeze_evaders=False, surround=True,
               shared_reward=False, tag_reward=0.01, catch_reward=5.0, urgency_reward=-0.1, constraint_window=1.0, max_cycles=30)
BATTLE = dict(map_size=12, max_cycles=50, view_radius=6, minimap_mode=False, extra_features=False, step_reward=-0.005,
              dead_penalty=-0.1, attack_penalty=-0.1, attack_opponent_reward=0.2)


def random_actions(env, gen):
    if env.spec.discrete_actions:
        return torch.randint(0, env.spec.n_actions, (env.num_envs, env.n_agents), generator=gen)
    return torch.rand(env.num_envs, env.n_agents, env.spec.n_actions, generator=gen)


def cells_with(img, cell, colour, dx, dy):
    """{(x, y)} of the grid cells whose pixel (dx, dy) in from the cell's corner has ``colour``."""
    pix = img[dy::cell, dx::cell]
    ys, xs = np.nonzero((pix == colour).all(-1))
    return set(zip(xs.tolist(), ys.tolist()))


# ---------------------------------------------------------------------------- every env through the runner's factory
@pytest.mark.parametrize("overrides", [
    ["env=pursuit", "env.x_size=8", "env.y_size=8", "env.n_pursuers=2", "env.n_evaders=3"],
    ["env=pursuit", "env.backend=pettingzoo", "env.x_size=8", "env.y_size=8", "env.n_pursuers=2", "env.n_evaders=3"],
    ["env=simple_adversary"],
    ["env=battle", "env.map_size=12"],
    ["env=ising", "env.L=8"],
], ids=["pursuit_native", "pursuit_pettingzoo", "simple_adversary", "battle", "ising"])
def test_frames_of_every_env_keep_their_size_and_follow_the_state(compose_cfg, overrides):
    cfg = compose_cfg([*overrides, "hardware=cpu", "hardware.num_envs=1", "hardware.env_workers=0"])
    env = make_env(cfg, 1, 0, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    try:
        env.reset()
        frames = [env.frame()]
        for _ in range(4):
            env.step(random_actions(env, gen))
            frames.append(env.frame(0))
    finally:
        env.close()
    assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in frames)
    assert {f.shape for f in frames} == {frames[0].shape}
    assert min(frames[0].shape[:2]) >= 32
    assert any(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))


def test_unknown_env_and_bad_index():
    class Other(VecEnv):
        spec = EnvSpec("other", ("a",), (1,), 2, ("t",))
        num_envs = 1

    with pytest.raises(UserError, match="cannot draw Other"):
        Other().frame()
    with pytest.raises(IndexError):
        Other().frame(1)
    env = IsingVecEnv(IsingConfig(L=4), 2, 0)
    env.reset()
    with pytest.raises(IndexError):
        env.frame(2)
    with pytest.raises(IndexError):
        env.frame(-1)


def test_render_names_no_environment_and_reads_no_private_attribute():
    """The environments draw themselves: marlrun.render holds only shared helpers, imports no environment and reads
    no library's private attributes."""
    source = Path(render.__file__).read_text()
    private = [node.attr for node in ast.walk(ast.parse(source))
               if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert private == []
    loaded = subprocess.run([sys.executable, "-c", "import sys, marlrun.render; print(sorted(sys.modules))"],
                            capture_output=True, text=True, check=True).stdout
    assert "marlrun.envs" not in loaded and "marlrun.render" in loaded


# ---------------------------------------------------------------------------- ising
def test_ising_2d_blocks_are_the_spins():
    env = IsingVecEnv(IsingConfig(dims=2, L=5), 2, 0)
    env.reset()
    cell = ising_cell(2, 5)
    for e in range(2):
        f = env.frame(e)
        assert f.shape == (5 * cell, 5 * cell, 3)
        up = env.spins()[e].numpy().reshape(5, 5) > 0  # site x * L + y: row x, column y
        for dy in (0, cell - 1):
            np.testing.assert_array_equal(f[dy::cell, dy::cell], np.where(up[..., None], 255, 0).repeat(3, -1))
    before = env.frame(0)
    flip = (env.spins() < 0).long()  # every spin turns over
    env.step(flip)
    np.testing.assert_array_equal(env.frame(0), 255 - before)


def test_ising_ring_is_one_tall_row():
    env = IsingVecEnv(IsingConfig(dims=1, L=40, neighbours=2), 1, 3)
    env.reset()
    f = env.frame()
    cell = ising_cell(1, 40)
    assert f.shape == (max(cell, RING_HEIGHT), 40 * cell, 3) and f.shape[0] >= 32
    assert (f == f[:1]).all()  # every pixel row is the same
    np.testing.assert_array_equal(f[0, ::cell, 0], np.where(env.spins()[0].numpy() > 0, 255, 0))


# ---------------------------------------------------------------------------- pursuit
def test_native_pursuit_shows_walls_pursuers_evaders_and_views():
    env = PursuitNativeVecEnv(PursuitConfig(**PURSUIT), 1, 0)
    c = PURSUIT_CELL
    assert env.sim.building[5, 4] and not env.sim.building[2, 2]  # the obstacle covers x 4..6, y 2..6
    pursuers, evaders = [[0, 0], [0, 0], [9, 7]], [[1, 0], [9, 7], [3, 7], [8, 1]]
    env.sim.set_state([pursuers], [evaders], [[True, True, True, False]], [0])
    f = env.frame()
    assert f.shape == (8 * c, 10 * c, 3) and f.dtype == np.uint8
    assert cells_with(f, c, render.RED, 2, 2) == {(0, 0), (9, 7)}  # two share a cell
    assert cells_with(f, c, render.BLUE, c // 2, c // 2) == {(1, 0), (9, 7), (3, 7)}  # the caught one is gone
    walls = {(x, y) for x, y in zip(*np.nonzero(env.sim.building))}
    assert (5, 4) in walls and cells_with(f, c, render.WALL, c // 2, c // 2) == walls
    tint = f[2 * c + c // 2, 2 * c + c // 2]  # (2, 2): in (0, 0)'s 7x7 view
    assert not (tint == render.FLOOR).all() and tint[0] > tint[2]
    assert (f[6 * c + c // 2, 0 * c + c // 2] == render.FLOOR).all()  # (0, 6): seen by nobody

    env.sim.set_state([pursuers], [evaders], [[False, True, True, False]], [0])  # one more evader caught
    f2 = env.frame()
    assert cells_with(f2, c, render.BLUE, c // 2, c // 2) == {(9, 7), (3, 7)}
    assert (f2[c // 2, c + c // 2] == tint).all()

    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        env.step(random_actions(env, gen))
        f = env.frame()
        state = env.sim.get_state()
        cells = {tuple(p) for p in state["pursuer_pos"][0].tolist()}
        assert f.shape == (8 * c, 10 * c, 3) and cells_with(f, c, render.RED, 2, 2) == cells


def test_pettingzoo_pursuit_is_drawn_like_the_native_one():
    env = make_pursuit(PursuitConfig(backend="pettingzoo", **PURSUIT), 1, 0, 5)
    native = PursuitNativeVecEnv(PursuitConfig(**PURSUIT), 1, 0)
    gen = torch.Generator().manual_seed(2)
    try:
        env.reset()
        for _ in range(3):
            env.step(random_actions(env, gen))
        state = pettingzoo_state(env.unwrapped_copy(0))
        native.sim.set_state(state["pursuer_pos"][None], state["evader_pos"][None], state["evader_active"][None], [state["frames"]])
        np.testing.assert_array_equal(env.frame(), native.frame())
        with pytest.raises(IndexError):
            env.frame(1)
    finally:
        env.close()


def test_pettingzoo_copies_in_workers_cannot_be_drawn():
    env = make_pursuit(PursuitConfig(backend="pettingzoo", **PURSUIT), 1, 1, 0)
    try:
        env.reset()
        assert env.worker_processes == 1
        with pytest.raises(UserError, match="env_workers=0"):
            env.frame()
    finally:
        env.close()


# ---------------------------------------------------------------------------- simple_adversary
def test_simple_adversary_discs_at_the_projected_positions():
    env = make_simple_adversary(SimpleAdversaryConfig(N=2, max_cycles=25, continuous_actions=False, success_radius=0.16), 1, 0, 0)
    try:
        env.reset()
        world = env.unwrapped_copy(0).world
        places = {world.agents[0]: (1.0, 1.0), world.agents[1]: (-1.0, -1.0), world.agents[2]: (1.0, -1.0),
                  world.landmarks[0]: (-1.0, 1.0), world.landmarks[1]: (0.0, 0.0)}
        for entity, pos in places.items():
            entity.state.p_pos = np.array(pos)
        goal = world.agents[0].goal_a
        f = env.frame()
        assert f.shape == (MPE_SIZE, MPE_SIZE, 3)

        def at(pos):  # [-1.5, 1.5]^2, y up
            scale = MPE_SIZE / (2 * MPE_VIEW)
            return f[int((MPE_VIEW - pos[1]) * scale), int((pos[0] + MPE_VIEW) * scale)]

        expected = [render.RED, render.BLUE, render.BLUE] + [render.GREEN if lm is goal else render.GREY for lm in world.landmarks]
        for (entity, pos), colour in zip(places.items(), expected):
            assert (at(pos) == colour).all(), entity.name
        assert (at((1.0, 1.3)) == render.WHITE).all()  # 0.3 away from the adversary (radius 0.15)
        assert (at((1.0, 0.5)) == render.WHITE).all()  # y points up: below it is empty
        area = (f == render.RED).all(-1).sum()
        radius = world.agents[0].size * MPE_SIZE / (2 * MPE_VIEW)
        assert abs(area - np.pi * radius**2) < 0.05 * np.pi * radius**2

        gen = torch.Generator().manual_seed(3)
        for _ in range(3):  # from rest an agent moves under a pixel in one step
            env.step(random_actions(env, gen))
        moved = env.frame()
        assert moved.shape == f.shape and not np.array_equal(moved, f)
        assert (moved == render.RED).all(-1).sum() > 0.5 * area  # the adversary is still in view
    finally:
        env.close()


# ---------------------------------------------------------------------------- battle
def test_battle_shows_walls_and_living_agents_by_team():
    env = make_battle(BattleConfig(**BATTLE), 1, 0, 0)
    c = battle_cell(12)
    gen = torch.Generator().manual_seed(4)
    try:
        env.reset()
        for t in range(4):
            f = env.frame()
            assert f.shape == (12 * c, 12 * c, 3)
            assert (f[c // 2, c // 2] == render.WALL).all() and (f[-1, -1] == render.WALL).all()  # the border
            for team, colour in enumerate((render.RED, render.BLUE)):
                mine = env.alive[0] & (env.team_index == team)
                assert cells_with(f, c, colour, c // 2, c // 2) == {tuple(p) for p in env.positions[0][mine].tolist()}
            env.step(random_actions(env, gen))
        red = np.flatnonzero(env.alive[0] & (env.team_index == 0))[0]
        x, y = env.positions[0, red]
        env.alive[0, red] = False  # as the adapter marks a dead agent
        assert (env.frame()[y * c + c // 2, x * c + c // 2] == render.FLOOR).all()
    finally:
        env.close()


# ---------------------------------------------------------------------------- animations
def colour_frames(n, h=15, w=21):
    return [np.full((h, w, 3), (40 * i, 255 - 40 * i, 100), dtype=np.uint8) for i in range(n)]


def test_gif_has_every_frame_loops_and_is_written_atomically(tmp_path):
    path = render.write_animation(colour_frames(3), tmp_path / "sub" / "a.gif", fps=5)
    assert path == tmp_path / "sub" / "a.gif"
    with Image.open(path) as im:
        assert (im.n_frames, im.size, im.info["loop"], im.info["duration"]) == (3, (21, 15), 0, 200)
        im.seek(2)
        assert np.abs(np.asarray(im.convert("RGB"))[0, 0].astype(int) - (80, 175, 100)).max() <= 8
    assert [p.name for p in path.parent.iterdir()] == ["a.gif"]  # no temporary file left


def test_mp4_is_written_padded_to_even_sides(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio

    path = render.write_animation(colour_frames(4), tmp_path / "a.mp4", fps=10)
    back = imageio.mimread(path)
    assert len(back) == 4 and back[0].shape == (16, 22, 3)
    assert np.abs(back[3][7, 10].astype(int) - (120, 135, 100)).max() <= 12
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]


def test_bad_suffix_bad_frames_and_missing_video_extra(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"\.gif or \.mp4"):
        render.write_animation(colour_frames(2), tmp_path / "a.avi")
    with pytest.raises(ValueError):
        render.write_animation([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)], tmp_path / "a.gif")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r'pip install "marlrun\[video\]"'):
        render.write_animation(colour_frames(2), tmp_path / "a.mp4")
    assert list(tmp_path.iterdir()) == []


def test_animation_reads_back_from_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    render.add_animation_to_tensorboard(tmp_path / "a", "eval/render", colour_frames(3), step=7)
    writer = SummaryWriter(log_dir=str(tmp_path / "b"))
    render.add_animation_to_tensorboard(writer, "eval/render", colour_frames(2, 10, 12), step=9, fps=4)
    for run, (n, w, h, step) in {"a": (3, 21, 15, 7), "b": (2, 12, 10, 9)}.items():
        images = EventAccumulator(str(tmp_path / run)).Reload().Images("eval/render")
        assert [(i.width, i.height, i.step) for i in images] == [(w, h, step)]
        with Image.open(io.BytesIO(images[0].encoded_image_string)) as im:
            assert im.format == "GIF" and im.n_frames == n
    writer.close()
    render.add_animation_to_tensorboard(writer, "eval/later", colour_frames(4, 6, 8), step=11)  # a closed writer's folder
    images = EventAccumulator(str(tmp_path / "b")).Reload().Images("eval/later")
    assert [(i.width, i.height, i.step) for i in images] == [(8, 6, 11)]


def test_an_evaluation_frame_carries_its_step_return_and_legend_and_counts_agents_sharing_a_cell():
    from marlrun.envs.pursuit_native import draw_pursuit, pursuit_legend, rectangle_map

    building = rectangle_map(16, 16)
    frame = draw_pursuit(building, np.array([[1, 1], [1, 1], [3, 1]]), np.array([[8, 12]]), 7)
    c = PURSUIT_CELL
    shared, alone = frame[c + 2:2 * c - 2, c + 2:2 * c - 2], frame[c + 2:2 * c - 2, 3 * c + 2:4 * c - 2]  # (1, 1): two pursuers
    assert (alone == render.RED).all() and not (shared == render.RED).all()  # a "2" written on the shared cell
    legend = pursuit_legend(7)
    a = render.captioned(frame, "super_ddqn on pursuit, step 1,000: t=3, return 1.00", legend)
    b = render.captioned(frame, "super_ddqn on pursuit, step 2,000: t=3, return 1.00", legend)
    assert a.shape[1] == frame.shape[1] and a.shape[0] > frame.shape[0] and (a[: frame.shape[0]] == frame).all()
    assert a.shape == b.shape and (a != b).any()  # the step is written under the picture
    strip = a[frame.shape[0]:]
    assert all((strip == colour).all(-1).sum() >= 40 for _, colour in legend)  # a swatch of every colour of the legend
    assert [name for name, _ in legend][:3] == ["pursuer", "evader", "obstacle"]
