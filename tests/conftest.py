import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from marlrun.config import register_configs


def _pin_xdist_worker_to_one_core() -> None:
    """Under pytest-xdist (`pytest -n auto`, the README's test command), each worker runs on a core of its own, and so do
    the `marlrun` processes its tests start (the affinity is inherited): hardware=auto then gives every run one torch
    thread, and two workers never oversubscribe the cores (OpenMP's busy-waiting would make them ten times slower)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if len(cores) < workers:
        return
    index = int(worker[2:])
    share = len(cores) // workers
    os.sched_setaffinity(0, set(cores[index * share:(index + 1) * share]))
    import torch

    torch.set_num_threads(share)


_pin_xdist_worker_to_one_core()

# A pursuit small enough that a CPU test trains on it in seconds.
SMALL_PURSUIT = [
    "env.x_size=8", "env.y_size=8", "env.n_pursuers=2", "env.n_evaders=3", "env.max_cycles=50",
    "hardware=cpu", "hardware.num_envs=2", "hardware.env_workers=0", "progress=false", "print_config=false",
]


@pytest.fixture
def compose_cfg():
    """Compose marlrun's config with overrides, as `marlrun train` would."""
    register_configs()

    def _compose(overrides=(), return_hydra_config=False):
        GlobalHydra.instance().clear()
        with initialize_config_module("marlrun.conf", version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)

    yield _compose
    GlobalHydra.instance().clear()


def run_cli(*args, cwd=None, timeout=600, **kwargs):
    """Run the installed `marlrun` entry point in a subprocess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "marlrun.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in Path(root).rglob("metrics.jsonl"))
