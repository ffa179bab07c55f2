"""PettingZoo SISL pursuit_v5: 8 pursuers chase 30 random evaders on a 16x16 grid."""

from __future__ import annotations

import torch
from pettingzoo.sisl import pursuit_v5

from marlrun.envs.base import EnvSpec
from marlrun.envs.vector import PettingZooVecEnv


class PursuitFactory:
    """Picklable pursuit_v5.parallel_env(**kwargs)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self):
        return pursuit_v5.parallel_env(**self.kwargs)


def pursuit_spec(n_pursuers: int, obs_range: int, name: str = "pursuit") -> EnvSpec:
    return EnvSpec(
        name=name,
        agent_names=tuple(f"pursuer_{i}" for i in range(n_pursuers)),
        obs_shape=(obs_range, obs_range, 3),  # channels: obstacles, pursuer count, evader count
        n_actions=5,
        teams=("pursuer",) * n_pursuers,
        obs_storage_dtype=torch.uint8,  # 0/1 walls and small agent counts
    )


def make_pursuit(num_envs: int, num_workers: int, seed: int, device="cpu", name: str = "pursuit", backend: str = "pettingzoo", **kwargs):
    """pursuit_v5 copies: PettingZoo's own (``backend="pettingzoo"``, stepped by SuperSuit in ``num_workers``
    processes) or marlrun's batched torch re-implementation on ``device`` (``backend="native"``)."""
    if backend == "native":
        from marlrun.envs.pursuit_native import make_pursuit_native

        return make_pursuit_native(num_envs, num_workers, seed, device, name, **kwargs)
    spec = pursuit_spec(kwargs["n_pursuers"], kwargs["obs_range"], name)
    return PettingZooVecEnv(PursuitFactory(**kwargs), spec, num_envs, num_workers, seed, device)
