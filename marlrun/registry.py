"""The one list of marlrun's algorithms and environments: name -> (config schema, what builds it).

Adding an algorithm is its module (the class and its ``Config`` dataclass, marlrun/algos/<name>.py), a YAML under
conf/algo/, a line here and its tests; an environment likewise (marlrun/envs/<name>.py, conf/env/). The CLI's
errors, ``--help``, the compatibility check, the config store and the README's key tables all read this list.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from marlrun.algos.base import Algorithm, unmet_needs
from marlrun.algos.maddpg import MADDPG, MADDPGConfig
from marlrun.algos.mcmc import MCMC, MCMCConfig
from marlrun.algos.mfq import MFQ, MFQConfig
from marlrun.algos.ppo import PPO, MAPPOConfig, PPOConfig
from marlrun.algos.qmix import QMIX, QMIXConfig
from marlrun.algos.super_ddqn import SuperDDQN, SuperDDQNConfig
from marlrun.envs.base import EnvSpec
from marlrun.envs.blind_spread import BlindSpreadConfig, blind_spread_spec, make_blind_spread
from marlrun.envs.battle import BattleConfig, battle_spec, make_battle
from marlrun.envs.ising import IsingConfig, ising_spec, make_ising
from marlrun.envs.pettingzoo import PettingZooConfig, make_pettingzoo, pettingzoo_spec
from marlrun.envs.pursuit import PursuitConfig, make_pursuit, pursuit_env_spec
from marlrun.envs.simple_adversary import SimpleAdversaryConfig, make_simple_adversary, simple_adversary_spec
from marlrun.envs.vmas import VmasConfig, make_vmas, vmas_spec
from marlrun.errors import UserError


class AlgorithmEntry(NamedTuple):
    config: type  # the dataclass schema of algo.*
    cls: type[Algorithm]  # built as cls(config, spec, num_envs, device, seed, precision)


class EnvironmentEntry(NamedTuple):
    config: type  # the dataclass schema of env.*
    make: Callable  # make(config, num_envs, num_workers, seed, device) -> VecEnv
    spec: Callable  # spec(config) -> EnvSpec, without building the copies (the memory check sizes the learner with it)


ALGORITHMS: dict[str, AlgorithmEntry] = {
    "super_ddqn": AlgorithmEntry(SuperDDQNConfig, SuperDDQN),
    "qmix": AlgorithmEntry(QMIXConfig, QMIX),
    "ippo": AlgorithmEntry(PPOConfig, PPO),
    "mappo": AlgorithmEntry(MAPPOConfig, PPO),
    "maddpg": AlgorithmEntry(MADDPGConfig, MADDPG),
    "mfq": AlgorithmEntry(MFQConfig, MFQ),
    "mcmc": AlgorithmEntry(MCMCConfig, MCMC),
}

ENVIRONMENTS: dict[str, EnvironmentEntry] = {
    "pursuit": EnvironmentEntry(PursuitConfig, make_pursuit, pursuit_env_spec),
    "simple_adversary": EnvironmentEntry(SimpleAdversaryConfig, make_simple_adversary, simple_adversary_spec),
    "ising": EnvironmentEntry(IsingConfig, make_ising, ising_spec),
    "battle": EnvironmentEntry(BattleConfig, make_battle, battle_spec),
    "blind_spread": EnvironmentEntry(BlindSpreadConfig, make_blind_spread, blind_spread_spec),
    "pettingzoo": EnvironmentEntry(PettingZooConfig, make_pettingzoo, pettingzoo_spec),
    "vmas": EnvironmentEntry(VmasConfig, make_vmas, vmas_spec),
}

KINDS = {"algo": ALGORITHMS, "env": ENVIRONMENTS}


def entry(group: str, name: str):
    """The registry entry of ``algo`` or ``env`` ``name``; a UserError listing the choices when there is none."""
    entries = KINDS[group]
    if name not in entries:
        raise UserError(f"{group}: '{name}' is not one of marlrun's {'algorithms' if group == 'algo' else 'environments'} "
                        f"({', '.join(entries)}); pick one with {group}=NAME")
    return entries[name]


def check_compatible(algo_name: str, spec: EnvSpec) -> None:
    """A UserError naming what the algorithm needs and the environment lacks, what to pick instead, and which of
    marlrun's algorithms fit this environment."""
    algo_cls = ALGORITHMS[algo_name].cls
    unmet = unmet_needs(algo_cls, spec)
    if unmet:
        fits = [name for name, e in ALGORITHMS.items() if not unmet_needs(e.cls, spec)]
        hint = f" {algo_cls.suggestion}" if algo_cls.suggestion else ""
        raise UserError(f"algo={algo_name} needs {unmet[0]}, which env={spec.name} does not have.{hint} "
                        f"Algorithms that fit env={spec.name}: {', '.join(fits) or 'none'}.")
