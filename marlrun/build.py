"""One way to build a run: ``build_run`` turns a config into the device, precision, environment and algorithm that
``marlrun train``, ``marlrun eval`` and ``marlrun bench`` use, so the three never drift apart.

In order: the config is checked by its schemas; the hardware is applied to this process (device, precision, denormal
flushing, the allocator, TF32 on a GPU); python, numpy and torch are seeded; the environment is built from the
registry, torch's thread count set for the cores its worker processes leave; the algorithm is checked against the
environment's spec and built from its typed config.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from marlrun.algos.base import Algorithm
from marlrun.config import validate
from marlrun.console import taking_long
from marlrun.envs.base import VecEnv
from marlrun.errors import UserError, warn
from marlrun.hardware import HardwareConfig, explain, setup, torch_threads
from marlrun.registry import check_compatible, entry


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def env_seed(seed: int, stream: int) -> int:
    """Seed for an environment stream: 0 = training, 1 = evaluation, 2+k = training after the k-th resume."""
    return seed if stream == 0 else int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def hardware_of(cfg: DictConfig) -> HardwareConfig:
    return OmegaConf.to_object(cfg.hardware)


def make_env(cfg: DictConfig, num_envs: int, seed: int, device: torch.device, num_workers: int | None = None) -> VecEnv:
    """``num_envs`` copies of the config's environment, in ``num_workers`` processes (default hardware.env_workers),
    refused first if they would not fit in memory."""
    workers = cfg.hardware.env_workers if num_workers is None else num_workers
    env_cfg = OmegaConf.to_object(cfg.env)
    check_memory([env_part(env_cfg, num_envs)], torch.device("cpu"), f"env={cfg.env.name}")
    with out_of_memory_is_a_user_error(cfg):
        return entry("env", cfg.env.name).make(env_cfg, num_envs, workers, seed, device)


def make_algorithm(cfg: DictConfig, env: VecEnv, device: torch.device, seed: int, precision: str, **changes) -> Algorithm:
    """The config's algorithm for ``env`` (checked against its spec first), its config keys ``changes`` replaced."""
    check_compatible(cfg.algo.name, env.spec)
    cls = entry("algo", cfg.algo.name).cls
    algo_cfg = dataclasses.replace(OmegaConf.to_object(cfg.algo), **changes)
    for message in cls.ineffective(algo_cfg, env.spec):
        warn(message)
    with out_of_memory_is_a_user_error(cfg):
        algo = cls(algo_cfg, env.spec, cfg.hardware.num_envs, device, seed, precision)
    env.provide_state = algo.uses_state  # a copy of the whole map every step: only for those who learn from it
    return algo


def env_part(env_cfg, copies: int, eval_copies: int = 0, copies_key: str = "") -> tuple[int, str]:
    """The environment copies' bytes and what sizes them, in words (``copies_key``: the key that set ``copies``)."""
    nbytes, keys = env_cfg.footprint(copies + eval_copies)
    counted = f"{copies_key}={copies:,} copies" if copies_key else f"{copies:,} copies"
    return nbytes, f"{keys} in {counted}" + (f" and eval_episodes={eval_copies:,} more" if eval_copies else "")


def check_run_fits(cfg: DictConfig, device: torch.device, precision: str, env_copies: int | None, eval_copies: int, with_algo: bool,
                   **changes) -> None:
    """The memory rule, applied before anything is built: the environment copies (training's and evaluation's) must fit
    in the host's memory, and the learner (sized on the meta device) with them, or on the GPU's; the compatibility
    check comes first, from the environment's spec alone."""
    env_cfg = OmegaConf.to_object(cfg.env)
    env_bytes = env_part(env_cfg, env_copies or cfg.hardware.num_envs, eval_copies, "" if env_copies else "hardware.num_envs")
    check_memory([env_bytes], torch.device("cpu"), f"env={cfg.env.name}")
    if not with_algo:
        return
    spec = entry("env", cfg.env.name).spec(env_cfg)
    check_compatible(cfg.algo.name, spec)
    cls = entry("algo", cfg.algo.name).cls
    algo_cfg = dataclasses.replace(OmegaConf.to_object(cfg.algo), **changes)
    by_keys: dict[str, int] = {}
    for attr, nbytes in learner_bytes(cls, algo_cfg, spec, cfg.hardware.num_envs, precision).items():
        keys = cls.memory_keys.get(attr, f"its {attr}")
        by_keys[keys] = by_keys.get(keys, 0) + nbytes
    parts = [(nbytes, keys) for keys, nbytes in by_keys.items()]
    check_memory(parts if device.type == "cuda" else [*parts, env_bytes], device, f"algo={cfg.algo.name} on env={cfg.env.name}")


def check_budget(cfg: DictConfig) -> None:
    """A UserError when the run could not do what it asks within total_steps (more env steps per step of the copies than
    the whole budget; the algorithm's own checks: no update ever, a schedule that ends too soon)."""
    if cfg.hardware.num_envs > cfg.total_steps:
        raise UserError(f"hardware.num_envs={cfg.hardware.num_envs:,} copies make {cfg.hardware.num_envs:,} env steps per step, more than "
                        f"total_steps={cfg.total_steps:,}; use fewer copies or a longer run")
    e = entry("algo", cfg.algo.name)
    e.cls.check_run(OmegaConf.to_object(cfg.algo), cfg.total_steps, cfg.hardware.num_envs)


def tensor_bytes(obj, depth: int = 0):
    """(tensor, bytes) of every tensor ``obj`` holds: a network's parameters and buffers, and those of the lists, dicts
    and marlrun objects it keeps (replay, teams); for an optimizer, (parameter, bytes of the state it will keep for
    it)."""
    if isinstance(obj, torch.Tensor):
        yield obj, obj.numel() * obj.element_size()
    elif isinstance(obj, torch.nn.Module):
        for t in (*obj.parameters(), *obj.buffers()):
            yield t, t.numel() * t.element_size()
    elif isinstance(obj, torch.optim.Optimizer):
        for group in obj.param_groups:
            for p in group["params"]:
                yield p, moments(obj, group) * p.numel() * p.element_size()  # made at the first step
    elif depth < 4 and isinstance(obj, (list, tuple, dict)):
        for item in obj.values() if isinstance(obj, dict) else obj:
            yield from tensor_bytes(item, depth + 1)
    elif depth < 4 and type(obj).__module__.startswith("marlrun.") and hasattr(obj, "__dict__"):
        for item in vars(obj).values():
            yield from tensor_bytes(item, depth + 1)


def moments(optimizer: torch.optim.Optimizer, group: dict) -> int:
    """Tensors the size of each parameter that ``optimizer`` keeps for it (Adam: two moments; RMSprop: one, more with
    momentum or centering; SGD: a momentum buffer, if any)."""
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return 2 + bool(group.get("amsgrad"))
    if isinstance(optimizer, torch.optim.RMSprop):
        return 1 + bool(group.get("momentum")) + bool(group.get("centered"))
    if isinstance(optimizer, torch.optim.SGD):
        return int(bool(group.get("momentum")))
    return 2  # another optimizer: as Adam


def learner_bytes(cls: type[Algorithm], algo_cfg, spec, num_envs: int, precision: str) -> dict[str, int]:
    """What the learner will hold, in bytes per attribute (networks with their optimizer's moments, replay; and what
    it plans to collect, ``cls.planned_bytes``), measured by building it on torch's meta device, which allocates
    nothing. Activations are not counted: it is a floor."""
    with torch.device("meta"):  # what a constructor makes without naming a device lands there too
        algo = cls(algo_cfg, spec, num_envs, torch.device("meta"), 0, precision)
    sizes, owner = dict(cls.planned_bytes(algo_cfg, spec, num_envs)), {}
    optimizers = [(attr, value) for attr, value in vars(algo).items() if isinstance(value, torch.optim.Optimizer)]
    for attr, value in vars(algo).items():
        if not isinstance(value, torch.optim.Optimizer):
            for t, nbytes in tensor_bytes(value):
                if id(t) not in owner:  # a tensor two attributes share is counted once
                    owner[id(t)] = attr
                    sizes[attr] = sizes.get(attr, 0) + nbytes
    for attr, optimizer in optimizers:  # each parameter's moments go with the network that holds it
        for p, nbytes in tensor_bytes(optimizer):
            held_by = owner.get(id(p), attr)
            sizes[held_by] = sizes.get(held_by, 0) + nbytes
    return sizes


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new allocations: the GPU's free memory, or the host's MemAvailable (None where unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**29 else f"{nbytes / 2**20:.0f} MiB"


def check_memory(parts: list[tuple[int, str]], device: torch.device, what: str) -> None:
    """The memory rule: a run is refused before it builds ``what`` when the floor of what it will hold (``parts``:
    bytes and the keys that size them, largest named first) exceeds the memory free for it now; above 80 % of it, a
    warning. The floor counts tensors and arrays the run keeps, not activations or the libraries' own overhead."""
    free = available_memory(device)
    total = sum(nbytes for nbytes, _ in parts)
    if free is None or total <= 0.8 * free:
        return
    biggest = sorted(parts, key=lambda part: -part[0])[:2]
    drivers = "; ".join(f"{gib(nbytes)} for {keys}" for nbytes, keys in biggest if nbytes >= 0.05 * total)
    where = "free on the GPU" if device.type == "cuda" else "available on this machine"
    if total > free:
        raise UserError(f"not enough memory: {what} would hold at least {gib(total)} ({drivers}), and {gib(free)} is {where}; "
                        "lower those keys")
    warn(f"{what} will hold at least {gib(total)} of the {gib(free)} {where} ({drivers})")


@dataclass
class BuiltRun:
    cfg: DictConfig  # checked by its schemas, interpolations resolved
    device: torch.device
    precision: str  # what hardware.precision resolved to for this algorithm here
    env: VecEnv
    algo: Algorithm | None  # None when built without one (bench's raw environment cases)
    hardware: dict  # what runs and why (hardware.explain): device, precision, torch threads

    def close(self) -> None:
        self.env.close()


def build_run(cfg: DictConfig, *, seed: int | None = None, env_copies: int | None = None, env_stream: int = 0,
              env_workers: int | None = None, device: str | None = None, threads: int | None = None,
              parallel_jobs: int = 1, with_algo: bool = True, eval_copies: int = 0, **algo_changes) -> BuiltRun:
    """Everything a run needs, built as training builds it.

    ``seed``: the run's seed (default ``cfg.seed``); ``env_copies``, ``env_stream``, ``env_workers``: the environment's
    copies (default hardware.num_envs), seed stream (``env_seed``) and worker processes (default hardware.env_workers);
    ``device``: another device than hardware.device; ``threads``: torch's thread count (default: ``torch_threads``,
    for ``parallel_jobs`` runs sharing the machine); ``algo_changes``: algorithm keys replaced (bench's batch sizes);
    ``with_algo=False``: the environment alone; ``eval_copies``: the evaluation copies the run will add later (their
    memory is checked now, with the rest).
    The algorithm is built for hardware.num_envs copies, whatever ``env_copies`` says (evaluation plays other copies
    with the same learner)."""
    cfg = validate(cfg)
    check_budget(cfg)
    seed = cfg.seed if seed is None else seed
    hardware = hardware_of(cfg)
    if device is not None:
        hardware = dataclasses.replace(hardware, device=device)
    resolved, precision = setup(hardware, auto_bf16=entry("algo", cfg.algo.name).cls.auto_bf16)
    for message in getattr(OmegaConf.to_object(cfg.env), "ineffective", list)():
        warn(message)
    check_run_fits(cfg, resolved, precision, env_copies, eval_copies, with_algo, **algo_changes)
    seed_everything(seed)
    copies = env_copies or cfg.hardware.num_envs
    with taking_long(f"building {copies:,} copies of env={cfg.env.name}"):
        env = make_env(cfg, copies, env_seed(seed, env_stream), resolved, env_workers)
    try:
        torch.set_num_threads(threads or torch_threads(hardware, parallel_jobs, env.worker_processes))
        with taking_long(f"building algo={cfg.algo.name}"):
            algo = make_algorithm(cfg, env, resolved, seed, precision, **algo_changes) if with_algo else None
    except BaseException:
        env.close()
        raise
    auto_bf16 = entry("algo", cfg.algo.name).cls.auto_bf16
    what = explain(hardware, resolved, precision, torch.get_num_threads(), env.worker_processes, auto_bf16)
    return BuiltRun(cfg, resolved, precision, env, algo, what)


class out_of_memory_is_a_user_error:
    """An allocation that cannot be served while the environments or the learner are built: one line naming the keys
    that size them, instead of the allocator's message."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None:
            return False
        while exc.__cause__ is not None and not isinstance(exc, (MemoryError, RuntimeError)):
            exc = exc.__cause__
        text = str(exc)
        if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)):
            sizes = ", ".join(f"{k}={OmegaConf.select(self.cfg, k)}" for k in ("hardware.num_envs", "algo.buffer_size", "eval_episodes")
                              if OmegaConf.select(self.cfg, k) is not None)
            asked = re.search(r"allocate (\d+) bytes", text)
            what = f"an allocation of {int(asked.group(1)) / 2**30:.1f} GiB failed" if asked else " ".join(text.split())[:120]
            raise UserError(f"not enough memory to build the run ({sizes}): {what}; lower them") from None
        return False
