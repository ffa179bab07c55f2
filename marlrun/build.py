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
    """``num_envs`` copies of the config's environment, in ``num_workers`` processes (default hardware.env_workers)."""
    workers = cfg.hardware.env_workers if num_workers is None else num_workers
    with out_of_memory_is_a_user_error(cfg):
        return entry("env", cfg.env.name).make(OmegaConf.to_object(cfg.env), num_envs, workers, seed, device)


def make_algorithm(cfg: DictConfig, env: VecEnv, device: torch.device, seed: int, precision: str, **changes) -> Algorithm:
    """The config's algorithm for ``env`` (checked against its spec first), its config keys ``changes`` replaced."""
    check_compatible(cfg.algo.name, env.spec)
    algo_cfg = OmegaConf.to_object(cfg.algo)
    for message in entry("algo", cfg.algo.name).cls.ineffective(algo_cfg, env.spec):
        warn(message)
    if changes:
        algo_cfg = dataclasses.replace(algo_cfg, **changes)
    with out_of_memory_is_a_user_error(cfg):
        algo = entry("algo", cfg.algo.name).cls(algo_cfg, env.spec, cfg.hardware.num_envs, device, seed, precision)
    env.provide_state = algo.uses_state  # a copy of the whole map every step: only for those who learn from it
    return algo


def check_budget(cfg: DictConfig) -> None:
    """A UserError when the run could not do what it asks within total_steps (more env steps per step of the copies than
    the whole budget; the algorithm's own checks: no update ever, a schedule that ends too soon)."""
    if cfg.hardware.num_envs > cfg.total_steps:
        raise UserError(f"hardware.num_envs={cfg.hardware.num_envs:,} copies make {cfg.hardware.num_envs:,} env steps per step, more than "
                        f"total_steps={cfg.total_steps:,}; use fewer copies or a longer run")
    e = entry("algo", cfg.algo.name)
    e.cls.check_run(OmegaConf.to_object(cfg.algo), cfg.total_steps, cfg.hardware.num_envs)


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
              parallel_jobs: int = 1, with_algo: bool = True, **algo_changes) -> BuiltRun:
    """Everything a run needs, built as training builds it.

    ``seed``: the run's seed (default ``cfg.seed``); ``env_copies``, ``env_stream``, ``env_workers``: the environment's
    copies (default hardware.num_envs), seed stream (``env_seed``) and worker processes (default hardware.env_workers);
    ``device``: another device than hardware.device; ``threads``: torch's thread count (default: ``torch_threads``,
    for ``parallel_jobs`` runs sharing the machine); ``algo_changes``: algorithm keys replaced (bench's batch sizes);
    ``with_algo=False``: the environment alone.
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
    seed_everything(seed)
    env = make_env(cfg, env_copies or cfg.hardware.num_envs, env_seed(seed, env_stream), resolved, env_workers)
    try:
        torch.set_num_threads(threads or torch_threads(hardware, parallel_jobs, env.worker_processes))
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
