import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from marlrun.config import register_configs

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
