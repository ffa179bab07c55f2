"""The native torch pursuit against PettingZoo's pursuit_v5, stepped in lockstep from the same states."""

import inspect

import numpy as np
import pytest
import torch
from pettingzoo.sisl import pursuit_v5
from pettingzoo.sisl.pursuit.pursuit_base import Pursuit
from pettingzoo.sisl.pursuit.utils import two_d_maps

from marlrun.envs.base import VecStep
from marlrun.envs.pursuit import PursuitConfig, make_pursuit
from marlrun.envs.pursuit_native import MOVES, PursuitNative, PursuitNativeVecEnv, numpy_sum, pettingzoo_state, rectangle_map

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # small tensors: a second intra-op thread only adds waiting, a lot of it on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

BASE = dict(x_size=16, y_size=16, n_pursuers=8, n_evaders=30, obs_range=7, n_catch=2, freeze_evaders=False,
            surround=True, shared_reward=True, tag_reward=0.01, catch_reward=5.0, urgency_reward=-0.1,
            constraint_window=1.0, max_cycles=500)

# (library arguments, games stepped side by side, parallel steps, events that must happen)
CONFIGS = {
    # the default game, cut early
    "default": (dict(BASE, max_cycles=40), 2, 100, {"truncated"}),
    # non-square, catching by n_catch=1 pursuer on the evader's cell, own rewards, small view
    "no_surround_catch1": (dict(BASE, x_size=11, y_size=7, n_pursuers=5, n_evaders=6, obs_range=5, n_catch=1,
                                surround=False, shared_reward=False, max_cycles=60), 4, 150, {"caught", "terminated"}),
    # n_catch=2 on one cell, frozen evaders, shared reward, tall map
    "no_surround_catch2_frozen": (dict(BASE, x_size=6, y_size=9, n_pursuers=7, n_evaders=3, obs_range=5, n_catch=2,
                                       surround=False, freeze_evaders=True, max_cycles=80), 4, 150,
                                  {"caught", "terminated"}),
    # surround on a small crowded map (the view is larger than the map), own rewards. (Every configuration leaves
    # room for the library's placement, which loops forever where it finds none.)
    "surround_small": (dict(BASE, x_size=5, y_size=5, n_pursuers=5, n_evaders=2, obs_range=7, shared_reward=False,
                            max_cycles=100), 4, 150, {"caught", "terminated", "truncated"}),
    # surround with frozen evaders, wide map, shared reward, even view, different reward values
    "surround_frozen_even_view": (dict(BASE, x_size=10, y_size=6, n_pursuers=7, n_evaders=3, obs_range=6,
                                       freeze_evaders=True, tag_reward=0.03, catch_reward=2.5, urgency_reward=-0.07,
                                       max_cycles=50), 4, 150, {"caught", "truncated"}),
}


class EvaderLog:
    """Records the move every evader of a pursuit_v5 env is given, by wrapping the evaders' own step methods
    (so the moves are the library's, drawn by its controller), keyed by the evader's index at reset."""

    def __init__(self, par_env):
        self.base = par_env.unwrapped.env
        self.moves: dict[int, int] = {}

    def attach(self):  # after every reset: the library builds new evaders
        for j, evader in enumerate(list(self.base.evaders)):
            def step(a, _j=j, _step=evader.step):
                self.moves[_j] = int(a)
                return _step(a)
            evader.step = step

    def take(self, n, rng):
        # evaders that did not move (caught) get arbitrary moves: the native env must ignore them
        out = rng.integers(0, len(MOVES), n)
        for j, a in self.moves.items():
            out[j] = a
        self.moves.clear()
        return out


def stack(d, names):
    return np.stack([d[n] for n in names])


def lockstep(kwargs, games, steps, seed, device="cpu"):
    pars = [pursuit_v5.parallel_env(**kwargs) for _ in range(games)]
    names = pars[0].possible_agents
    P, N = kwargs["n_pursuers"], kwargs["n_evaders"]
    native = PursuitNative(games, device=device, seed=seed, **kwargs)
    logs = [EvaderLog(p) for p in pars]
    rng = np.random.default_rng(seed)
    events = dict(caught=0, terminated=0, truncated=0, steps=0, reward_nonzero=0)

    def inject(g, obs):
        logs[g].attach()
        native.set_state(env_ids=[g], **pettingzoo_state(pars[g]))
        np.testing.assert_array_equal(native.observe([g])[0].cpu().numpy(), stack(obs, names))
        np.testing.assert_array_equal(native.global_state([g])[0].cpu().numpy(), pars[g].state())

    for g, p in enumerate(pars):
        inject(g, p.reset(seed=seed * 100 + g)[0])

    for t in range(steps):
        actions = rng.integers(0, 5, size=(games, P))
        lib, moves = [], np.zeros((games, N), dtype=np.int64)
        for g, p in enumerate(pars):
            before = int(p.unwrapped.env.evader_layer.n_agents())
            lib.append(p.step({n: int(actions[g, i]) for i, n in enumerate(names)}))
            events["caught"] += before - p.unwrapped.env.evader_layer.n_agents()
            moves[g] = logs[g].take(N, rng)
        obs, rew, term, trunc = native.step(torch.as_tensor(actions, device=device), torch.as_tensor(moves, device=device))
        assert obs.dtype == torch.float32 and rew.dtype == torch.float32
        state, global_state = native.get_state(), native.global_state()
        for g, (o, r, te, tr, _) in enumerate(lib):
            np.testing.assert_array_equal(obs[g].cpu().numpy(), stack(o, names), err_msg=f"obs, step {t}, game {g}")
            np.testing.assert_allclose(rew[g].cpu().numpy(), stack(r, names), rtol=1e-6, atol=0, err_msg=f"reward, step {t}")
            assert term[g].tolist() == [te[n] for n in names], f"terminated, step {t}"
            assert trunc[g].tolist() == [tr[n] for n in names], f"truncated, step {t}"
            ref = pettingzoo_state(pars[g])
            np.testing.assert_array_equal(state["evader_active"][g].cpu().numpy(), ref["evader_active"])
            np.testing.assert_array_equal(state["pursuer_pos"][g].cpu().numpy(), ref["pursuer_pos"])
            act = ref["evader_active"]
            np.testing.assert_array_equal(state["evader_pos"][g].cpu().numpy()[act], ref["evader_pos"][act])
            assert int(state["frames"][g]) == ref["frames"]
            np.testing.assert_array_equal(global_state[g].cpu().numpy(), pars[g].state(), err_msg=f"global state, step {t}, game {g}")
            events["steps"] += 1
            events["reward_nonzero"] += int(np.any(np.abs(stack(r, names) - kwargs["urgency_reward"]) > 1e-12))
            if all(te.values()) or all(tr.values()):
                events["terminated" if all(te.values()) else "truncated"] += 1
                inject(g, pars[g].reset()[0])  # continues the library's RNG: a fresh placement
    return events


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_lockstep_with_pettingzoo(name, device):
    kwargs, games, steps, expected = CONFIGS[name]
    events = lockstep(kwargs, games, steps, seed=sum(map(ord, name)), device=device)
    assert events["steps"] == games * steps
    for event in expected:  # the comparison covered what this configuration is for
        assert events[event] > 0, (event, events)
    assert events["reward_nonzero"] > 0


def test_events_cover_the_rules():
    # catches by surround / on the cell, both kinds of episode end: the lockstep configurations are not idle
    assert {e for _, _, _, ex in CONFIGS.values() for e in ex} == {"caught", "terminated", "truncated"}
    assert sum(g * s for _, g, s, _ in CONFIGS.values()) >= 2000


# ---------------------------------------------------------------------------------------------------------------
# Hand-made states, injected into the library and into the native env alike


def set_library_state(par, pursuer_pos, evader_pos, evader_active, frames):
    base = par.unwrapped.env
    for agent, (x, y) in zip(base.pursuer_layer.allies, pursuer_pos, strict=True):
        agent.set_position(x, y)
    evaders = list(base.evaders)  # right after a reset: all of them
    for agent, (x, y) in zip(evaders, evader_pos, strict=True):
        agent.set_position(x, y)
    base.evader_layer.allies[:] = [a for a, keep in zip(evaders, evader_active) if keep]
    base.evader_layer.nagents = int(np.sum(evader_active))
    base.evaders_gone[:] = ~np.asarray(evader_active, dtype=bool)
    base.frames = frames
    base.model_state[1] = base.pursuer_layer.get_state_matrix()
    base.model_state[2] = base.evader_layer.get_state_matrix()


def one_step_both(kwargs, state, actions):
    par = pursuit_v5.parallel_env(**kwargs)
    names = par.possible_agents
    par.reset(seed=0)
    set_library_state(par, **state)
    log = EvaderLog(par)
    log.attach()
    native = PursuitNative(1, seed=0, **kwargs)
    native.set_state(**{k: np.asarray(v)[None] for k, v in state.items()})
    np.testing.assert_array_equal(native.observe()[0].numpy(), stack({n: par.unwrapped.observe(n) for n in names}, names))
    o, r, te, tr, _ = par.step({n: actions[i] for i, n in enumerate(names)})
    moves = log.take(kwargs["n_evaders"], np.random.default_rng(0))
    obs, rew, term, trunc = native.step(torch.tensor([actions]), torch.as_tensor(moves)[None])
    np.testing.assert_array_equal(obs[0].numpy(), stack(o, names))
    np.testing.assert_allclose(rew[0].numpy(), stack(r, names), rtol=1e-6, atol=0)
    assert term[0].tolist() == [te[n] for n in names] and trunc[0].tolist() == [tr[n] for n in names]
    np.testing.assert_array_equal(native.get_state()["evader_active"][0].numpy(), ~par.unwrapped.env.evaders_gone)
    return native, rew[0].numpy(), term[0].tolist(), trunc[0].tolist()


# 8 x 8: the obstacle covers x = 3..5, y = 2..6
SMALL = dict(BASE, x_size=8, y_size=8, n_pursuers=3, n_evaders=1, surround=False, n_catch=1, freeze_evaders=True,
             shared_reward=False, max_cycles=10)


@pytest.mark.parametrize("frames", [5, 9])
def test_last_evader_caught_on_the_last_frame_is_a_truncation(frames):
    # pursuer 0 steps left from (1, 0) onto the evader in the corner; 1 tries to leave the map, 2 to enter the obstacle
    state = dict(pursuer_pos=[[1, 0], [7, 7], [2, 4]], evader_pos=[[0, 0]], evader_active=[True], frames=frames)
    native, rew, term, trunc = one_step_both(SMALL, state, [0, 1, 1])
    np.testing.assert_array_equal(native.get_state()["pursuer_pos"][0].numpy(), [[0, 0], [7, 7], [2, 4]])
    assert not native.get_state()["evader_active"].any()
    if frames == SMALL["max_cycles"] - 1:  # all caught, but the time limit wins and termination is not reported
        assert trunc == [True] * 3 and term == [False] * 3
    else:
        assert term == [True] * 3 and trunc == [False] * 3
    # pursuer 0: 1 evader next to it before its move, 2 after (in the corner both clipped neighbours are its own
    # cell), seen after its move in both sub-steps; then the catch and the urgency reward
    tag = 0.01 / 3
    np.testing.assert_allclose(rew, [2 * tag + 2 * tag + 2 * tag + 5.0 - 0.1, -0.1, -0.1], rtol=1e-6)


def test_surround_at_the_border_and_the_obstacle():
    kwargs = dict(SMALL, surround=True, n_pursuers=7, n_evaders=3)
    # A (0, 4) on the border needs 3; B (2, 4) next to the obstacle needs 3; D (7, 7) in the corner needs 2, has 1
    state = dict(pursuer_pos=[[1, 4], [0, 5], [0, 3], [0, 3], [2, 5], [2, 3], [6, 7]],
                 evader_pos=[[0, 4], [2, 4], [7, 7]], evader_active=[True, True, True], frames=0)
    native, rew, term, trunc = one_step_both(kwargs, state, [4] * 7)
    assert native.get_state()["evader_active"][0].tolist() == [False, False, True]
    assert (rew[:6] > 4.0).all() and rew[6] < 1.0  # every pursuer on a surrounding cell, once (p0 caught two)
    assert rew[0] < rew[1] + 1.0
    assert term == [False] * 7 and trunc == [False] * 7


# ---------------------------------------------------------------------------------------------------------------
# Pieces


def test_map_and_summation_order_match_the_library():
    for xs, ys in [(16, 16), (8, 8), (11, 7), (5, 5), (3, 13), (1, 4)]:
        np.testing.assert_array_equal(rectangle_map(xs, ys), two_d_maps.rectangle_map(xs, ys) == -1)
    rng = np.random.default_rng(0)
    for n in range(1, 40):
        x = rng.standard_normal((50, n)) * 10.0 ** rng.integers(-3, 17, (50, n))
        np.testing.assert_array_equal(numpy_sum(torch.as_tensor(x)).numpy(), [np.add.reduce(row) for row in x])


def test_native_evader_moves_are_uniform_and_frozen_evaders_stay():
    sim = PursuitNative(128, seed=1, **dict(BASE, n_catch=99, surround=False))  # nothing is ever caught
    moves = np.zeros(len(MOVES))
    free = ~rectangle_map(16, 16)
    for _ in range(20):
        before = sim.get_state()["evader_pos"].numpy()
        sim.step(torch.randint(0, 5, (128, 8)))
        d = sim.get_state()["evader_pos"].numpy() - before
        x, y = before[..., 0], before[..., 1]
        inner = (x > 0) & (x < 15) & (y > 0) & (y < 15)
        xi, yi = np.clip(x, 1, 14), np.clip(y, 1, 14)
        open4 = inner & free[xi - 1, yi] & free[xi + 1, yi] & free[xi, yi - 1] & free[xi, yi + 1]
        for a, (dx, dy) in enumerate(MOVES):
            moves[a] += np.sum(open4 & (d[..., 0] == dx) & (d[..., 1] == dy))
        assert np.sum(open4) == sum(np.sum(open4 & (d[..., 0] == dx) & (d[..., 1] == dy)) for dx, dy in MOVES)
    np.testing.assert_allclose(moves / moves.sum(), 0.2, atol=0.01)

    frozen = PursuitNative(64, seed=1, **dict(BASE, freeze_evaders=True))
    start = frozen.get_state()
    for _ in range(10):
        frozen.step(torch.randint(0, 5, (64, 8)))
    after = frozen.get_state()
    still = after["evader_active"]
    assert torch.equal(after["evader_pos"][still], start["evader_pos"][still])
    assert not torch.equal(after["pursuer_pos"], start["pursuer_pos"])


def placements(kwargs, games, seed):
    sim = PursuitNative(games, seed=seed, **kwargs)
    s = sim.get_state()
    return s["pursuer_pos"].numpy(), s["evader_pos"].numpy()


def test_initial_placement_respects_the_map_and_the_library_distribution():
    # (the window always leaves room: where it does not, the library loops forever)
    kwargs = dict(BASE, x_size=12, y_size=10, n_pursuers=3, n_evaders=5, constraint_window=0.75)
    X, Y = kwargs["x_size"], kwargs["y_size"]
    wall = rectangle_map(X, Y)
    pursuers, evaders = placements(kwargs, 8192, seed=3)
    for pos in (pursuers, evaders):
        x, y = pos[..., 0], pos[..., 1]
        assert ((x >= 0) & (x < X) & (y >= 0) & (y < Y)).all()
        assert not wall[x, y].any()
        d = np.abs(pos[:, :, None] - pos[:, None, :]).sum(-1)  # same kind: never on or next to one another
        assert (d[:, ~np.eye(pos.shape[1], dtype=bool)] >= 2).all()
    both = np.concatenate([pursuers, evaders], 1)  # one window per game, int(size * 0.75) or one more cells wide
    assert (np.ptp(both[..., 0], 1) <= int(X * 0.75)).all() and (np.ptp(both[..., 1], 1) <= int(Y * 0.75)).all()
    assert len(np.unique(both.min(1), axis=0)) > 4  # the window moves

    lib_p, lib_e = [], []
    par = pursuit_v5.parallel_env(**kwargs)
    par.reset(seed=5)
    for _ in range(400):
        s = pettingzoo_state(par)
        lib_p.append(s["pursuer_pos"])
        lib_e.append(s["evader_pos"])
        par.reset()
    for lib, nat in ((np.array(lib_p), pursuers), (np.array(lib_e), evaders)):
        a = np.bincount((lib[..., 0] * Y + lib[..., 1]).ravel(), minlength=X * Y).astype(float)
        b = np.bincount((nat[..., 0] * Y + nat[..., 1]).ravel(), minlength=X * Y).astype(float)
        used = (a + b) > 0
        a, b = a[used], b[used]
        pooled = (a + b) / (a.sum() + b.sum())
        chi2 = ((a - pooled * a.sum()) ** 2 / (pooled * a.sum())).sum() + ((b - pooled * b.sum()) ** 2 / (pooled * b.sum())).sum()
        dof = used.sum() - 1
        assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)


def test_placement_falls_back_where_the_library_would_hang():
    pursuers, _ = placements(dict(BASE, x_size=5, y_size=5, n_pursuers=20, n_evaders=2), 16, seed=0)
    assert not rectangle_map(5, 5)[pursuers[..., 0], pursuers[..., 1]].any()


# ---------------------------------------------------------------------------------------------------------------
# The vector env


VEC = dict(BASE, x_size=9, y_size=7, n_pursuers=4, n_evaders=3, obs_range=5, surround=False, n_catch=1, max_cycles=12)


def test_vec_env_shapes_and_spec():
    env = make_pursuit(PursuitConfig(name="chase", **VEC), 6, 3, seed=0)  # the native backend (num_workers is ignored)
    assert isinstance(env, PursuitNativeVecEnv) and env.worker_processes == 0
    assert env.num_envs == 6 and env.n_agents == 4 and env.device == torch.device("cpu")
    assert env.spec.name == "chase" and env.spec.obs_shape == (5, 5, 3) and env.spec.n_actions == 5
    obs = env.reset()
    assert obs.shape == (6, 4, 5, 5, 3) and obs.dtype == torch.float32
    step = env.step(torch.randint(0, 5, (6, 4)))
    assert isinstance(step, VecStep)
    assert step.obs.shape == step.next_obs.shape == (6, 4, 5, 5, 3) and step.next_obs.dtype == torch.float32
    assert step.reward.shape == (6, 4) and step.reward.dtype == torch.float32
    for flag in (step.terminated, step.truncated, step.alive):
        assert flag.shape == (6, 4) and flag.dtype == torch.bool
    assert step.alive.all() and step.episode_end.shape == (6,) and step.episode_end.dtype == torch.bool
    assert env.episode_metrics(step.next_obs) == {} and env.state_metrics() == {}
    assert "state" in env.spec.capabilities and env.spec.state_shape == (env.sim.Y, env.sim.X, 3)
    assert env.context() == {} and step.next_state is None  # the state only for an algorithm that asks for it
    env.provide_state = True
    step = env.step(torch.zeros(6, 4, dtype=torch.long))
    assert env.context()["state"].shape == step.next_state.shape == (6, *env.spec.state_shape)
    env.close()
    with pytest.raises(TypeError):
        PursuitConfig(render_mode="human")
    assert make_pursuit(PursuitConfig(), 2, 0, seed=0).spec.obs_shape == (7, 7, 3)  # the library's defaults
    # every default is the library's, except shared_reward (the SUPER paper's false; the library's true)
    library = {k: p.default for k, p in inspect.signature(Pursuit.__init__).parameters.items() if p.default is not p.empty}
    ours = PursuitConfig().library_kwargs()
    assert {k: library[k] for k in ours} == {**ours, "shared_reward": True} and ours["shared_reward"] is False


def test_vec_env_resets_automatically_and_reports_the_final_observation():
    E = 64
    env = PursuitNativeVecEnv(PursuitConfig(**VEC), E, seed=4)
    env.reset()
    rng = torch.Generator().manual_seed(0)
    ended_by = {"terminated": 0, "truncated": 0}
    for t in range(40):
        actions = torch.randint(0, 5, (E, 4), generator=rng)
        # a twin from the same state and random stream, without the automatic reset
        twin = PursuitNative(E, seed=0, **VEC)
        twin.set_state(**env.sim.get_state())
        twin.generator.set_state(env.sim.generator.get_state())
        obs, rew, term, trunc = twin.step(actions)
        step = env.step(actions)
        assert torch.equal(step.next_obs, obs) and torch.equal(step.reward, rew)
        assert torch.equal(step.terminated, term) and torch.equal(step.truncated, trunc)
        done = step.episode_end
        assert torch.equal(done, (term | trunc).all(1)) and torch.equal(done, (term | trunc).any(1))
        assert torch.equal(step.obs[~done], step.next_obs[~done])
        fresh = env.sim.get_state()
        assert (fresh["frames"][done] == 0).all() and fresh["evader_active"][done].all()
        assert torch.equal(step.obs[done], env.sim.observe(done))
        assert not torch.equal(step.obs[done], step.next_obs[done]) or not done.any()
        ended_by["terminated"] += int(term[:, 0].sum())
        ended_by["truncated"] += int(trunc[:, 0].sum())
    assert ended_by["terminated"] > 0 and ended_by["truncated"] > 0


def run_vec(seed, steps=30, E=8):
    env = PursuitNativeVecEnv(PursuitConfig(**VEC), E, seed=seed)
    out = [env.reset()]
    rng = torch.Generator().manual_seed(1)
    for _ in range(steps):
        s = env.step(torch.randint(0, 5, (E, 4), generator=rng))
        out += [s.obs, s.next_obs, s.reward, s.terminated, s.truncated]
    return out


def test_vec_env_seeding():
    a, b, c = run_vec(7), run_vec(7), run_vec(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    first = a[0].flatten(1)  # copies start from different placements
    assert len({tuple(row.tolist()) for row in first}) == first.shape[0]

