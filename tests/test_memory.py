"""The memory rule (build.check_run_fits): what a run will hold is estimated before anything is built, the learner by
building it on torch's meta device, and a run that cannot fit is refused in one line naming the keys that size it."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from pettingzoo.sisl.pursuit.utils.two_d_maps import rectangle_map

from marlrun import build
from marlrun.build import check_memory, learner_bytes, tensor_bytes
from marlrun.config import validate
from marlrun.envs.pursuit import start_window_room
from marlrun.errors import UserError
from marlrun.registry import ALGORITHMS, entry

SMALL = {
    "pursuit": ["env=pursuit", "env.x_size=8", "env.y_size=8", "env.n_pursuers=2", "env.n_evaders=3"],
    "simple_adversary": ["env=simple_adversary"],
    "ising": ["env=ising", "env.L=8"],
    "battle": ["env=battle", "env.map_size=16"],
}
FITS = {"super_ddqn": "pursuit", "qmix": "pursuit", "ippo": "pursuit", "mappo": "simple_adversary", "maddpg": "simple_adversary",
        "mfq": "battle", "mcmc": "ising"}


def held_bytes(algo) -> int:
    """What a real learner holds: its tensors, networks and the state its optimizers made (the step counters aside)."""
    total, seen = 0, set()
    for value in vars(algo).values():
        if isinstance(value, torch.optim.Optimizer):
            for state in value.state.values():
                total += sum(t.numel() * t.element_size() for k, t in state.items() if k != "step")
            continue
        for t, nbytes in tensor_bytes(value):
            if id(t) not in seen:
                seen.add(id(t))
                total += nbytes
    return total


def test_every_algorithm_has_a_case():
    assert set(FITS) == set(ALGORITHMS)


@pytest.mark.parametrize("name", sorted(FITS))
def test_the_meta_estimate_is_what_the_built_learner_holds(compose_cfg, name):
    """Built for real on the CPU, with every optimizer's moments made by one step, the learner holds exactly what the
    meta-device build said it would (PPO's planned rollout aside: it is collected later)."""
    cfg = validate(compose_cfg([f"algo={name}", *SMALL[FITS[name]], "hardware=cpu", "hardware.num_envs=2"]
                               + (["env.reward=physical"] if name == "mcmc" else [])))
    cls = entry("algo", name).cls
    algo_cfg = OmegaConf.to_object(cfg.algo)
    spec = entry("env", cfg.env.name).spec(OmegaConf.to_object(cfg.env))
    estimate = learner_bytes(cls, algo_cfg, spec, 2, "fp32")
    for attr, nbytes in cls.planned_bytes(algo_cfg, spec, 2).items():
        estimate[attr] -= nbytes
    algo = cls(algo_cfg, spec, 2, torch.device("cpu"), 0, "fp32")
    for optimizer in (v for v in vars(algo).values() if isinstance(v, torch.optim.Optimizer)):
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        optimizer.step()  # Adam makes its moments; a zero gradient moves nothing
    assert sum(estimate.values()) == held_bytes(algo)


def test_ppo_plans_its_rollout(compose_cfg):
    """IPPO collects rollout_steps x num_envs steps before each update: the observations and their successors."""
    cfg = validate(compose_cfg(["algo=ippo", *SMALL["pursuit"], "hardware=cpu", "algo.rollout_steps=64"]))
    spec = entry("env", "pursuit").spec(OmegaConf.to_object(cfg.env))
    planned = entry("algo", "ippo").cls.planned_bytes(OmegaConf.to_object(cfg.algo), spec, 4)["rollout"]
    obs = 2 * 7 * 7 * 3 * 4  # two agents' 7x7x3 views, float32
    assert planned >= 64 * 4 * 2 * obs


def test_a_run_that_cannot_fit_is_refused_naming_its_keys(monkeypatch):
    monkeypatch.setattr(build, "available_memory", lambda device: 10 * 2**30)
    with pytest.raises(UserError) as refused:
        check_memory([(12 * 2**30, "algo.buffer_size (replay)"), (2**20, "the networks")], torch.device("cpu"), "algo=x")
    message = str(refused.value)
    assert "not enough memory" in message and "12.0 GiB for algo.buffer_size (replay)" in message and "10.0 GiB" in message
    assert "the networks" not in message  # a part under 5 % of the whole is not what to lower


def test_near_the_limit_is_a_warning_and_well_below_is_silent(monkeypatch, capsys):
    monkeypatch.setattr(build, "available_memory", lambda device: 10 * 2**30)
    check_memory([(9 * 2**30, "env.L=4,096")], torch.device("cpu"), "env=ising")
    assert capsys.readouterr().err.startswith("marlrun: warning: env=ising will hold at least 9.0 GiB of the 10.0 GiB")
    check_memory([(7 * 2**30, "env.L=4,096")], torch.device("cpu"), "env=ising")
    assert capsys.readouterr().err == ""


def test_unknown_free_memory_checks_nothing(monkeypatch):
    monkeypatch.setattr(build, "available_memory", lambda device: None)
    check_memory([(2**60, "anything")], torch.device("cpu"), "x")


def test_the_host_memory_is_read():
    free = build.available_memory(torch.device("cpu"))
    assert free is None or free > 0


@pytest.mark.parametrize("x, y", [(x, y) for x in range(3, 25, 3) for y in range(3, 25, 4)])
def test_the_start_window_room_is_counted_without_the_map(x, y):
    """The room of the worst start window, counted per side, is what the library's map gives cell by cell."""
    open_cells = np.pad((rectangle_map(x, y) != -1).astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    for window in (0.1, 0.3, 0.5, 0.75, 1.0):
        wx, wy = int(x * window), int(y * window)
        if wx < 1 or wy < 1:
            assert start_window_room(x, y, window) == 0
            continue
        sums = open_cells[wx:, wy:] - open_cells[:-wx, wy:] - open_cells[wx:, :-wy] + open_cells[:-wx, :-wy]
        assert start_window_room(x, y, window) == int(sums.min())
