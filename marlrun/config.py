"""Typed config schemas, registered in Hydra's ConfigStore.

Every YAML file under ``conf/`` names one of these schemas first in its
defaults list, so a misspelled key or a value of the wrong type fails at
composition with a message that names the key. Range checks live in each
schema's ``__post_init__`` and run when :func:`validate` turns the composed
config into dataclass objects, before anything is built or written.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from marlrun.errors import UserError
from marlrun.hardware import PRECISIONS


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"{key}: {message}")


def _require_batch_fits(batch_size: int, buffer_size: int) -> None:
    _require(batch_size <= buffer_size, "algo.batch_size",
             f"a minibatch of {batch_size} cannot come from a replay of {buffer_size}; lower algo.batch_size or raise algo.buffer_size")


# --------------------------------------------------------------------------- hardware
@dataclass
class HardwareConfig:
    """Where training runs and how the environment copies are spread."""

    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    torch_threads: int = 0  # intra-op threads for torch in the main process; 0 = OMP_NUM_THREADS if set, else the cores env workers leave free (1 to 4)
    num_envs: int = 4  # parallel environment copies stepped together (each step counts num_envs env steps)
    env_workers: int = 1  # worker processes that step the copies; 0 = step them in the main process
    precision: str = "auto"  # fp32 | bf16 (the networks' matmuls under autocast; refused where the hardware has no bf16 units) | auto (bf16 where it is the faster: AMX, AMD's AVX-512-BF16)
    flush_denormal: bool = True  # CPU: flush denormal floats to zero (FTZ/DAZ), which the slow microcode path for them makes much faster

    def __post_init__(self) -> None:
        _require(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "hardware.device",
            f"unknown device '{self.device}'; use auto, cpu, cuda or cuda:N",
        )
        _require(self.torch_threads >= 0, "hardware.torch_threads", "must be >= 0 (0 = automatic)")
        _require(self.num_envs >= 1, "hardware.num_envs", "must be >= 1")
        _require(self.env_workers >= 0, "hardware.env_workers", "must be >= 0 (0 = in the main process)")
        _require(self.precision in PRECISIONS, "hardware.precision", f"unknown precision '{self.precision}'; pick one of {', '.join(PRECISIONS)}")


# --------------------------------------------------------------------------- environments
PURSUIT_BACKENDS = ("native", "pettingzoo")


@dataclass
class PursuitConfig:
    """PettingZoo SISL pursuit_v5; every constructor argument is exposed with the library's default."""

    _target_: str = "marlrun.envs.pursuit.make_pursuit"
    name: str = "pursuit"
    backend: str = "native"  # native: marlrun's batched torch pursuit (same dynamics, tested in lockstep); pettingzoo: the library's
    x_size: int = 16  # grid width
    y_size: int = 16  # grid height
    n_pursuers: int = 8  # learning agents
    n_evaders: int = 30  # evaders move at random
    obs_range: int = 7  # side of each pursuer's square view (odd)
    n_catch: int = 2  # pursuers needed around an evader to catch it
    freeze_evaders: bool = False  # evaders stand still
    surround: bool = True  # True: evaders are caught when surrounded; False: when n_catch pursuers share its cell
    shared_reward: bool = False  # every pursuer receives the team's mean reward
    tag_reward: float = 0.01  # per evader tagged (a pursuer moves onto it)
    catch_reward: float = 5.0  # per pursuer taking part in a catch
    urgency_reward: float = -0.1  # added every step
    constraint_window: float = 1.0  # fraction of the map where agents may start
    max_cycles: int = 500  # steps before truncation

    def __post_init__(self) -> None:
        _require(self.backend in PURSUIT_BACKENDS, "env.backend", f"unknown backend '{self.backend}'; pick one of {', '.join(PURSUIT_BACKENDS)}")
        _require(self.x_size >= 2 and self.y_size >= 2, "env.x_size/env.y_size", "the grid must be at least 2x2")
        _require(self.n_pursuers >= 1, "env.n_pursuers", "must be >= 1")
        _require(self.n_evaders >= 1, "env.n_evaders", "must be >= 1")
        _require(self.obs_range >= 1 and self.obs_range % 2 == 1, "env.obs_range", "must be a positive odd number")
        _require(self.n_catch >= 1, "env.n_catch", "must be >= 1")
        _require(0.0 < self.constraint_window <= 1.0, "env.constraint_window", "must be in (0, 1]")
        _require(self.max_cycles >= 1, "env.max_cycles", "must be >= 1")
        view = 2 * max(self.x_size, self.y_size) + 1
        _require(self.obs_range <= view, "env.obs_range", f"at most {view} on a {self.x_size}x{self.y_size} map (a view of {view} sees all of it from any cell), got {self.obs_range}")
        _require(self.surround or self.n_catch <= self.n_pursuers, "env.n_catch",
                 f"{self.n_catch} pursuers must share an evader's cell to catch it, but there are only {self.n_pursuers} (env.n_pursuers); no catch would ever happen")
        from marlrun.envs.pursuit import most_agents_apart, start_window_room

        smallest = 1 / min(self.x_size, self.y_size)
        _require(int(self.x_size * self.constraint_window) >= 1 and int(self.y_size * self.constraint_window) >= 1, "env.constraint_window",
                 f"the start window must hold at least one cell per side: at least {smallest:.3g} on a {self.x_size}x{self.y_size} map, got {self.constraint_window}")
        room = start_window_room(self.x_size, self.y_size, self.constraint_window)
        fits = most_agents_apart(room)
        for key, n in (("env.n_pursuers", self.n_pursuers), ("env.n_evaders", self.n_evaders)):
            _require(n <= fits, key, f"{n} do not fit on a {self.x_size}x{self.y_size} map: a reset places each agent apart from the others of its kind "
                                     f"(its cell and 4 neighbours), and the start window has {room} open cells, room for {fits}; "
                                     "use fewer, a bigger map (env.x_size, env.y_size) or a larger env.constraint_window")


@dataclass
class SimpleAdversaryConfig:
    """mpe2 simple_adversary_v3 (physical deception): 1 adversary against N good agents, N landmarks."""

    _target_: str = "marlrun.envs.simple_adversary.make_simple_adversary"
    name: str = "simple_adversary"
    N: int = 2  # good agents, and landmarks
    max_cycles: int = 25  # steps before truncation
    continuous_actions: bool = False  # False: Discrete(5); True: Box(0, 1, (5,)), the strength of each move
    success_radius: float = 0.16  # game score: a side succeeds when it ends this close to the target (2 landmark radii)
    adversary_reward: str = "distance"  # distance (mpe2's) | squared_distance (openai's, the MADDPG paper's)

    def __post_init__(self) -> None:
        _require(self.N >= 1, "env.N", f"must be >= 1, got {self.N}")
        _require(self.adversary_reward in ("distance", "squared_distance"), "env.adversary_reward",
                 f"unknown reward '{self.adversary_reward}'; pick distance or squared_distance")
        _require(self.max_cycles >= 1, "env.max_cycles", "must be >= 1")
        _require(self.success_radius > 0, "env.success_radius", "must be > 0")


ISING_REWARDS = ("physical", "alignment")
ISING_OBSERVATIONS = ("spins", "neighbours")


@dataclass
class IsingConfig:
    """Ising model of marlrun's own, in torch: every spin of a ring or torus is an agent choosing up or down."""

    _target_: str = "marlrun.envs.ising.make_ising"
    name: str = "ising"
    dims: int = 2  # 1: a ring of L spins; 2: an L x L torus
    L: int = 32  # side of the lattice (spins per side)
    neighbours: int = 4  # 1D: 2; 2D: 4 (von Neumann) or 8 (with diagonals)
    reward: str = "physical"  # physical: 0.5 * J * s_i * sum of neighbour spins + h * s_i; alignment: the seed chapter's
    J: float = 1.0  # coupling
    h: float = 0.0  # external field
    max_cycles: int = 100  # steps per episode (then a fresh random lattice)
    observation: str = "spins"  # spins: [own spin, neighbour spins]; neighbours: the neighbours' spins only (the MF-Q paper's Ising code)

    def __post_init__(self) -> None:
        _require(self.dims in (1, 2), "env.dims", f"must be 1 (ring) or 2 (torus), got {self.dims}")
        _require(self.L >= 3, "env.L", f"the lattice side must be >= 3, got {self.L}")
        allowed = (2,) if self.dims == 1 else (4, 8)
        _require(self.neighbours in allowed, "env.neighbours", f"a {self.dims}D lattice takes {' or '.join(map(str, allowed))} neighbours, got {self.neighbours}")
        _require(self.reward in ISING_REWARDS, "env.reward", f"unknown reward '{self.reward}'; pick one of {', '.join(ISING_REWARDS)}")
        _require(self.observation in ISING_OBSERVATIONS, "env.observation",
                 f"unknown observation '{self.observation}'; pick one of {', '.join(ISING_OBSERVATIONS)}")
        _require(self.max_cycles >= 1, "env.max_cycles", "must be >= 1")


@dataclass
class BattleConfig:
    """magent2 battle_v4: red against blue; map_size 40 gives 64 against 64 (the MF-Q paper's setting)."""

    _target_: str = "marlrun.envs.battle.make_battle"
    name: str = "battle"
    map_size: int = 40  # side of the square map; the library places about map_size^2 * 0.04 agents per team
    max_cycles: int = 400  # steps per round (the MF-Q paper's 400; the library's default is 1000)
    view_radius: int = 6  # mean fields: teammates within this many cells (6 = the 13x13 view)
    minimap_mode: bool = False  # add the library's minimap channels to observations
    extra_features: bool = False  # add the library's extra feature channels (last action, last reward...)
    step_reward: float = -0.005  # the library's reward arguments, with its defaults
    dead_penalty: float = -0.1
    attack_penalty: float = -0.1
    attack_opponent_reward: float = 0.2

    def __post_init__(self) -> None:
        _require(self.map_size >= 12, "env.map_size", f"battle_v4 needs a map of at least 12x12, got {self.map_size}")
        _require(self.max_cycles >= 1, "env.max_cycles", "must be >= 1")
        _require(self.view_radius >= 0, "env.view_radius", "must be >= 0")


# --------------------------------------------------------------------------- algorithms
SHARING = ("none", "all", "quantile", "gaussian", "stochastic")


@dataclass
class SuperDDQNConfig:
    """SUPER on dueling double DQN with prioritized replay (Gerstgrasser et al., 2023).

    Defaults are the reference settings for pursuit.
    """

    _target_: str = "marlrun.algos.super_ddqn.SuperDDQN"
    name: str = "super_ddqn"
    # experience sharing
    sharing: str = "quantile"  # none | all | quantile | gaussian | stochastic
    bandwidth: float = 0.1  # beta: target fraction of transitions shared, in (0, 1]
    window: int = 1500  # k: |TD| values remembered by the quantile and gaussian heuristics
    share_team: Optional[str] = None  # only agents of this team share (null: every team shares within itself)
    parameter_sharing: bool = False  # baseline: one network for all agents instead of one per agent
    # DQN
    lr: float = 1.6e-4  # Adam learning rate
    adam_eps: float = 1e-8  # Adam epsilon
    gamma: float = 0.99  # discount
    batch_size: int = 32  # minibatch per agent per update
    buffer_size: int = 120_000  # replay capacity per agent
    learning_starts: int = 1_000  # env steps before the first update
    rollout_fragment: int = 4  # env steps per environment copy between sharing rounds
    updates_per_fragment: int = 1  # gradient steps per agent after each fragment of one environment copy
    target_update_interval: int = 1_000  # env steps between hard target-network updates
    max_grad_norm: float = 40.0  # gradient norm clip, per agent
    huber_delta: float = 1.0  # Huber loss threshold on the TD error
    # exploration: epsilon-greedy, linear decay
    epsilon_start: float = 0.1
    epsilon_end: float = 0.001
    epsilon_decay_steps: int = 100_000  # env steps from epsilon_start to epsilon_end
    # prioritized replay
    prioritized: bool = True
    per_alpha: float = 0.6
    per_beta: float = 0.4
    per_eps: float = 1e-6
    # network: conv stack -> linear -> dueling heads
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    conv_kernel: int = 2
    hidden: int = 64  # linear layer after the convolutions
    head_hidden: int = 256  # hidden units in the value and advantage streams

    def __post_init__(self) -> None:
        _require(self.sharing in SHARING, "algo.sharing", f"unknown heuristic '{self.sharing}'; pick one of {', '.join(SHARING)}")
        _require(0.0 < self.bandwidth <= 1.0, "algo.bandwidth", f"beta must be in (0, 1], got {self.bandwidth}")
        _require(self.window >= 1, "algo.window", f"must be >= 1, got {self.window}")
        _require(self.lr > 0, "algo.lr", "must be > 0")
        _require(0.0 <= self.gamma <= 1.0, "algo.gamma", "must be in [0, 1]")
        for key in ("batch_size", "buffer_size", "rollout_fragment", "updates_per_fragment", "target_update_interval", "epsilon_decay_steps", "hidden", "head_hidden", "conv_kernel"):
            _require(getattr(self, key) >= 1, f"algo.{key}", f"must be >= 1, got {getattr(self, key)}")
        _require(self.learning_starts >= 0, "algo.learning_starts", "must be >= 0")
        _require_batch_fits(self.batch_size, self.buffer_size)
        _require(self.max_grad_norm > 0, "algo.max_grad_norm", "must be > 0")
        for key in ("epsilon_start", "epsilon_end"):
            _require(0.0 <= getattr(self, key) <= 1.0, f"algo.{key}", "must be in [0, 1]")
        _require(0.0 <= self.per_alpha and 0.0 <= self.per_beta <= 1.0, "algo.per_alpha/per_beta", "alpha >= 0, beta in [0, 1]")
        _require(len(self.conv_channels) >= 1 and min(self.conv_channels) >= 1, "algo.conv_channels", "needs at least one positive width")


CRITICS = ("maddpg", "ddpg")


CONTINUOUS_POLICIES = ("noise", "gumbel")


@dataclass
class MADDPGConfig:
    """MADDPG (Lowe et al., 2017). Defaults are the reference settings (openai/maddpg) for the MPE games."""

    _target_: str = "marlrun.algos.maddpg.MADDPG"
    name: str = "maddpg"
    critic: str = "maddpg"  # every agent's critic: maddpg (all observations and actions) | ddpg (its own only)
    ddpg_teams: list[str] = field(default_factory=list)  # teams whose agents use a ddpg critic anyway, e.g. [adversary]
    actor_lr: float = 1e-2  # Adam learning rate of the actors
    critic_lr: float = 1e-2  # Adam learning rate of the critics
    gamma: float = 0.95  # discount
    tau: float = 0.01  # polyak averaging rate of the target networks
    batch_size: int = 1024  # joint transitions per update
    buffer_size: int = 1_000_000  # joint transitions in replay
    learning_starts: int = 25_600  # env steps (transitions) in replay before the first update (1024 x 25)
    update_interval: int = 100  # env steps between update rounds (one critic and one actor step per agent)
    max_grad_norm: float = 0.5  # gradient norm clip, per agent and network
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # ReLU layers of actors and critics
    actor_reg: float = 1e-3  # weight of mean(logits^2) in the actor loss
    gumbel_temperature: float = 1.0  # discrete actions: Gumbel-softmax temperature
    gumbel_hard: bool = False  # discrete actions: straight-through one-hot samples instead of soft ones
    noise_std: float = 0.1  # continuous actions: exploration noise, as a fraction of the action range
    continuous_policy: str = "noise"  # continuous actions: gumbel (the soft Gumbel-softmax sample is the action, openai's) | noise
    greedy_eval: bool = True  # evaluation: the greedy action (true) or the behaviour policy's sample, as openai's MADDPG evaluates (false)

    def __post_init__(self) -> None:
        _require(self.continuous_policy in CONTINUOUS_POLICIES, "algo.continuous_policy",
                 f"unknown policy '{self.continuous_policy}'; pick one of {', '.join(CONTINUOUS_POLICIES)}")
        _require(self.critic in CRITICS, "algo.critic", f"unknown critic '{self.critic}'; pick one of {', '.join(CRITICS)}")
        for key in ("actor_lr", "critic_lr", "max_grad_norm", "gumbel_temperature"):
            _require(getattr(self, key) > 0, f"algo.{key}", f"must be > 0, got {getattr(self, key)}")
        _require(0.0 <= self.gamma <= 1.0, "algo.gamma", "must be in [0, 1]")
        _require(0.0 < self.tau <= 1.0, "algo.tau", "must be in (0, 1]")
        for key in ("batch_size", "buffer_size", "update_interval"):
            _require(getattr(self, key) >= 1, f"algo.{key}", f"must be >= 1, got {getattr(self, key)}")
        _require(self.learning_starts >= 0, "algo.learning_starts", "must be >= 0")
        _require_batch_fits(self.batch_size, self.buffer_size)
        _require(len(self.hidden) >= 1 and min(self.hidden) >= 1, "algo.hidden", "needs at least one positive width")
        _require(self.actor_reg >= 0, "algo.actor_reg", "must be >= 0")
        _require(self.noise_std >= 0, "algo.noise_std", "must be >= 0")


MIXERS = ("qmix", "vdn")


@dataclass
class QMIXConfig:
    """QMIX (Rashid et al., 2018) and VDN (Sunehag et al., 2018). Defaults: the QMIX reference code (pymarl) where it
    applies to feed-forward agents, SUPER-DDQN's pursuit network and replay size for comparability."""

    _target_: str = "marlrun.algos.qmix.QMIX"
    name: str = "qmix"
    mixer: str = "qmix"  # qmix: monotonic mixing network from hypernetworks of the state | vdn: the sum of the agents' Qs
    parameter_sharing: bool = True  # one agent network for all agents, with the agent's one-hot id as input (pymarl's default)
    lr: float = 5e-4  # RMSprop learning rate (pymarl)
    optim_alpha: float = 0.99  # RMSprop smoothing constant (pymarl)
    optim_eps: float = 1e-5  # RMSprop epsilon (pymarl)
    gamma: float = 0.99  # discount
    batch_size: int = 32  # joint transitions per gradient step (pymarl: 32 episodes)
    buffer_size: int = 120_000  # joint transitions in replay
    learning_starts: int = 1_000  # env steps before the first update
    update_interval: int = 4  # env steps (summed over copies) per gradient step, as SUPER-DDQN's one update per 4-step fragment
    target_update_interval: int = 1_000  # env steps between target-network copies (agents and mixer)
    max_grad_norm: float = 10.0  # gradient norm clip over agents and mixer together (pymarl)
    epsilon_start: float = 1.0  # exploration: linear decay (pymarl: 1.0 -> 0.05 over 50k steps)
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 50_000
    standardise_rewards: bool = False  # train on (r - mean) / std of the team rewards seen so far (EPyMARL's option)
    mixing_embed: int = 32  # QMIX mixing network width (pymarl)
    hypernet_embed: int = 64  # hidden units of the hypernetworks (pymarl)
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # agent network: SUPER-DDQN's
    conv_kernel: int = 2
    hidden: int = 64
    head_hidden: int = 256

    def __post_init__(self) -> None:
        _require(self.mixer in MIXERS, "algo.mixer", f"unknown mixer '{self.mixer}'; pick one of {', '.join(MIXERS)}")
        for key in ("lr", "optim_eps", "max_grad_norm"):
            _require(getattr(self, key) > 0, f"algo.{key}", f"must be > 0, got {getattr(self, key)}")
        _require(0.0 <= self.optim_alpha < 1.0, "algo.optim_alpha", "must be in [0, 1)")
        _require(0.0 <= self.gamma <= 1.0, "algo.gamma", "must be in [0, 1]")
        for key in ("batch_size", "buffer_size", "update_interval", "target_update_interval", "epsilon_decay_steps",
                    "mixing_embed", "hypernet_embed", "conv_kernel", "hidden", "head_hidden"):
            _require(getattr(self, key) >= 1, f"algo.{key}", f"must be >= 1, got {getattr(self, key)}")
        _require(self.learning_starts >= 0, "algo.learning_starts", "must be >= 0")
        _require_batch_fits(self.batch_size, self.buffer_size)
        for key in ("epsilon_start", "epsilon_end"):
            _require(0.0 <= getattr(self, key) <= 1.0, f"algo.{key}", "must be in [0, 1]")
        _require(len(self.conv_channels) >= 1 and min(self.conv_channels) >= 1, "algo.conv_channels", "needs at least one positive width")


PPO_CRITICS = ("local", "central")


@dataclass
class PPOConfig:
    """IPPO (critic: local) and MAPPO (critic: central). Defaults: the MAPPO paper's (Yu et al. 2022) where they do not
    depend on the environment family (clip 0.2, GAE lambda 0.95, entropy 0.01, value loss coefficient 1 with Huber
    delta 10 and value normalisation, Adam eps 1e-5, gradient clip 10, two ReLU layers of 64, parameter sharing)."""

    _target_: str = "marlrun.algos.ppo.PPO"
    name: str = "ippo"
    critic: str = "local"  # local: V(o_i) (IPPO) | central: V(state, o_i) (MAPPO; the concatenated observations without a state)
    random_teams: list[str] = field(default_factory=list)  # teams played by a uniformly random policy (they do not learn)
    parameter_sharing: bool = True  # one actor and one critic per team, with one-hot agent ids (false: a weight set per agent)
    lr: float = 5e-4  # actor Adam learning rate
    critic_lr: float = 5e-4  # critic Adam learning rate
    adam_eps: float = 1e-5
    lr_anneal: bool = False  # anneal both learning rates linearly to 0 over anneal_steps
    anneal_steps: int = 200_000  # env steps of the anneal (the presets set it to total_steps)
    gamma: float = 0.99
    gae_lambda: float = 0.95
    rollout_steps: int = 128  # steps of every env copy per update
    epochs: int = 5  # passes over each rollout
    minibatches: int = 2  # minibatches per pass
    clip: float = 0.2  # PPO ratio clip (and value clip)
    value_clip: bool = True  # clip the value update around the rollout's values
    value_coef: float = 1.0
    value_huber_delta: float = 10.0
    entropy_coef: float = 0.01
    max_grad_norm: float = 10.0  # actor and critic clipped separately, per weight set
    value_norm: bool = True  # running normalisation of the value targets (MAPPO's ValueNorm)
    log_std_init: float = -0.5  # continuous actions: initial log std of the Gaussian (before tanh)
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    conv_channels: list[int] = field(default_factory=list)  # image observations: the actor's k x k ReLU convolutions before its layers ([]: none)
    conv_kernel: int = 3
    greedy_eval: bool = True  # evaluation: the most likely action (true) or a sample of the policy (false)

    def __post_init__(self) -> None:
        _require(self.critic in PPO_CRITICS, "algo.critic", f"unknown critic '{self.critic}'; pick one of {', '.join(PPO_CRITICS)}")
        for key in ("lr", "critic_lr", "adam_eps", "max_grad_norm", "clip", "value_huber_delta"):
            _require(getattr(self, key) > 0, f"algo.{key}", f"must be > 0, got {getattr(self, key)}")
        for key in ("gamma", "gae_lambda"):
            _require(0.0 <= getattr(self, key) <= 1.0, f"algo.{key}", f"must be in [0, 1], got {getattr(self, key)}")
        for key in ("value_coef", "entropy_coef"):
            _require(getattr(self, key) >= 0, f"algo.{key}", f"must be >= 0, got {getattr(self, key)}")
        for key in ("anneal_steps", "rollout_steps", "epochs", "minibatches", "conv_kernel"):
            _require(getattr(self, key) >= 1, f"algo.{key}", f"must be >= 1, got {getattr(self, key)}")
        _require(len(self.hidden) >= 1 and min(self.hidden) >= 1, "algo.hidden", "needs at least one positive width")
        _require(all(c >= 1 for c in self.conv_channels), "algo.conv_channels", "widths must be >= 1")


@dataclass
class MAPPOConfig(PPOConfig):
    """MAPPO: PPO with a centralised critic."""

    name: str = "mappo"
    critic: str = "central"


LEARNERS = ("mfq", "iql")
CONTROLLERS = (*LEARNERS, "random")


@dataclass
class MFQConfig:
    """Mean-field Q-learning (Yang et al., 2018) and its IL baseline. Defaults are the MF-Q paper's battle settings."""

    _target_: str = "marlrun.algos.mfq.MFQ"
    name: str = "mfq"
    controller: str = "mfq"  # the env's first team (battle: red): mfq | iql (the IL baseline: no mean action)
    opponent: str = "mfq"  # its second team (battle: blue): mfq | iql (both learn) | random | frozen:RUN_DIR[@TEAM]
    rounds: int = 0  # mean-field refinement rounds before acting (0: the neighbours' previous actions)
    temperature: float = 1.0  # Boltzmann temperature tau of softmax(Q / tau) (env=ising: the lattice's physical temperature is T = 2 tau, see algo=mcmc)
    temperature_end: Optional[float] = None  # anneal linearly to this over temperature_decay_steps (null: constant)
    temperature_decay_steps: int = 0  # env steps of the anneal
    greedy_eval: bool = True  # evaluation: argmax (true) or the Boltzmann policy at the current temperature (false)
    lr: float = 1e-4  # Adam learning rate
    gamma: float = 0.95  # discount
    tau: float = 0.005  # polyak rate of the target network
    batch_size: int = 64  # transitions per gradient step, per learning team
    buffer_size: int = 80_000  # transitions in replay, per learning team
    learning_starts: int = 1_000  # env steps before the first update
    update_interval: int = 1  # env steps (summed over copies) between gradient steps of every learning team
    max_grad_norm: float = 10.0  # gradient-norm clip
    huber_delta: float = 1.0  # Huber loss threshold on the TD error
    conv_channels: list[int] = field(default_factory=lambda: [32, 32])  # image observations: conv widths
    conv_kernel: int = 3
    obs_hidden: int = 256  # image observations: dense layer after the convolutions
    mean_action_hidden: int = 64  # embedding of the mean action (0: feed it as it is)
    hidden: list[int] = field(default_factory=lambda: [128, 64])  # ReLU layers after observation and mean action meet

    def __post_init__(self) -> None:
        _require(self.controller in LEARNERS, "algo.controller", f"unknown controller '{self.controller}'; pick one of {', '.join(LEARNERS)}")
        _require(self.opponent in CONTROLLERS or (self.opponent.startswith("frozen:") and len(self.opponent) > 7), "algo.opponent",
                 f"unknown controller '{self.opponent}'; pick one of {', '.join(CONTROLLERS)}, or frozen:RUN_DIR[@TEAM]")
        _require(self.rounds >= 0, "algo.rounds", f"must be >= 0, got {self.rounds}")
        _require(self.temperature > 0, "algo.temperature", f"must be > 0, got {self.temperature}")
        _require(self.temperature_end is None or self.temperature_end > 0, "algo.temperature_end", f"must be > 0, got {self.temperature_end}")
        _require(self.temperature_decay_steps >= 0, "algo.temperature_decay_steps", "must be >= 0")
        for key in ("lr", "max_grad_norm", "huber_delta"):
            _require(getattr(self, key) > 0, f"algo.{key}", f"must be > 0, got {getattr(self, key)}")
        _require(0.0 <= self.gamma <= 1.0, "algo.gamma", "must be in [0, 1]")
        _require(0.0 < self.tau <= 1.0, "algo.tau", "must be in (0, 1]")
        for key in ("batch_size", "buffer_size", "update_interval", "conv_kernel", "obs_hidden"):
            _require(getattr(self, key) >= 1, f"algo.{key}", f"must be >= 1, got {getattr(self, key)}")
        _require(self.learning_starts >= 0, "algo.learning_starts", "must be >= 0")
        _require_batch_fits(self.batch_size, self.buffer_size)
        _require(self.mean_action_hidden >= 0, "algo.mean_action_hidden", "must be >= 0")
        _require(min(self.conv_channels, default=1) >= 1 and min(self.hidden, default=1) >= 1, "algo.conv_channels/hidden", "widths must be positive")


MCMC_RULES = ("heat_bath", "metropolis")
MCMC_SCANS = ("checkerboard", "synchronous")


@dataclass
class MCMCConfig:
    """Markov-chain Monte Carlo of the Ising model (env=ising, physical reward): the physics reference for MF-Q's
    temperature curve. Nothing is learned. It samples exp(-E / T), E the lattice energy the rewards add up to (minus),
    at T = 2 * temperature: ``temperature`` is MF-Q's Boltzmann temperature tau (see marlrun/algos/mcmc.py)."""

    _target_: str = "marlrun.algos.mcmc.MCMC"
    name: str = "mcmc"
    temperature: float = 1.0  # tau, as MF-Q's algo.temperature; the physical temperature is T = 2 tau (units of J/k): tau_c = 1.135
    rule: str = "heat_bath"  # heat_bath (Glauber) | metropolis
    scan: str = "checkerboard"  # checkerboard: one sublattice after another (valid); synchronous: all spins at once (invalid, for comparison)
    sweeps: int = 1  # sweeps over the lattice per env step

    def __post_init__(self) -> None:
        _require(self.temperature > 0, "algo.temperature", f"must be > 0, got {self.temperature}")
        _require(self.rule in MCMC_RULES, "algo.rule", f"unknown rule '{self.rule}'; pick one of {', '.join(MCMC_RULES)}")
        _require(self.scan in MCMC_SCANS, "algo.scan", f"unknown scan '{self.scan}'; pick one of {', '.join(MCMC_SCANS)}")
        _require(self.sweeps >= 1, "algo.sweeps", f"must be >= 1, got {self.sweeps}")


# --------------------------------------------------------------------------- the run
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit seed
LOGGERS = ("tensorboard", "wandb", "mlflow")  # marlrun/metrics.py (tensorboard) and marlrun/loggers.py
SUMMARY_METRICS = ("final_eval_return", "best_eval_return", "final_train_return", "steps_per_sec")  # numbers of summary.json
AGGREGATES = ("last", "mean", "max", "min")


@dataclass
class ObjectiveConfig:
    """The one number a hyperparameter search (``hydra/sweeper=optuna``) optimises, read from the finished run's folder
    (marlrun/search.py). A run that did not finish, or has no such number, or one that is not finite, is a failed trial."""

    metric: str = "final_eval_return"  # a number of summary.json (final_eval_return, best_eval_return, final_train_return, steps_per_sec) or a scalar of metrics.jsonl (eval/episode_return, train/loss, ...)
    aggregate: str = "last"  # a metrics.jsonl scalar over the records that hold it: last | mean | max | min (a summary.json number is taken as it is)

    def __post_init__(self) -> None:
        _require(self.metric in SUMMARY_METRICS or "/" in self.metric, "objective.metric",
                 f"'{self.metric}' is neither a number of summary.json ({', '.join(SUMMARY_METRICS)}) nor a scalar of metrics.jsonl "
                 "(those have a group: eval/episode_return, train/loss, ...)")
        _require(self.aggregate in AGGREGATES, "objective.aggregate", f"unknown aggregation '{self.aggregate}'; pick one of {', '.join(AGGREGATES)}")


@dataclass
class RunConfig:
    """Run-level keys (conf/config.yaml)."""

    algo: Any = MISSING
    env: Any = MISSING
    hardware: HardwareConfig = MISSING
    seed: int = 0  # seeds python, numpy, torch and every environment copy
    total_steps: int = 200_000  # environment steps to train for (summed over copies)
    log_interval: int = 5_000  # env steps between metric records (TensorBoard and metrics.jsonl)
    eval_interval: int = 50_000  # env steps between greedy evaluations; 0 = only at the end
    eval_episodes: int = 10  # greedy episodes per evaluation; 0 = no evaluation
    checkpoint_interval: int = 50_000  # env steps between checkpoints (one is also written at the end and on interrupt)
    keep_checkpoints: int = 1  # newest checkpoints kept in checkpoints/
    save_replay: bool = True  # put the replay buffers in checkpoints, so a resumed run continues exactly
    resume: Optional[str] = None  # set by `marlrun train resume=RUN_DIR`
    progress: bool = True  # rich progress bar
    print_config: bool = True  # print the composed config at start
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])  # where the scalars go besides metrics.jsonl (always written): tensorboard | wandb | mlflow
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # what a hyperparameter search optimises

    def __post_init__(self) -> None:
        _require(0 <= self.seed <= MAX_SEED, "seed", f"must be an integer in [0, 2**63 - 1], got {self.seed}")
        _require(self.total_steps >= 0, "total_steps", f"must be >= 0, got {self.total_steps}")
        _require(self.log_interval >= 1, "log_interval", "must be >= 1")
        _require(self.eval_interval >= 0, "eval_interval", "must be >= 0 (0 = only at the end)")
        _require(self.eval_episodes >= 0, "eval_episodes", "must be >= 0")
        _require(self.checkpoint_interval >= 1, "checkpoint_interval", "must be >= 1")
        _require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        for name in self.loggers:
            _require(name in LOGGERS, "loggers", f"unknown logger '{name}'; pick from {', '.join(LOGGERS)} (metrics.jsonl is always written)")
        _require(len(set(self.loggers)) == len(self.loggers), "loggers", f"each logger once, got {list(self.loggers)}")


ALGO_SCHEMAS = (SuperDDQNConfig, MADDPGConfig, MFQConfig, MCMCConfig, QMIXConfig, PPOConfig, MAPPOConfig)
ENV_SCHEMAS = (PursuitConfig, SimpleAdversaryConfig, IsingConfig, BattleConfig)


GROUPS = ("algo", "env", "hardware", "experiment")


def config_groups() -> str:
    """``group: option, option...`` for every config group under conf/, for ``marlrun train --help`` (Hydra's own
    list would show the schema/ groups too, which are not options)."""
    from importlib.resources import files

    root = files("marlrun.conf")
    lines = []
    for group in GROUPS:
        options = sorted(p.name.removesuffix(".yaml") for p in root.joinpath(group).iterdir() if p.name.endswith(".yaml"))
        lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def register_configs() -> None:
    OmegaConf.register_new_resolver("marlrun_groups", config_groups, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="marlrun_schema", node=RunConfig)
    # Under schema/ so that they do not show up as options of the algo/env/hardware groups.
    cs.store(group="schema/hardware", name="hardware", node=HardwareConfig)
    for group, schemas in (("algo", ALGO_SCHEMAS), ("env", ENV_SCHEMAS)):
        for schema in schemas:
            cs.store(group=f"schema/{group}", name=schema.name, node=schema)


def _one_line(exc: BaseException, cfg: DictConfig | None = None) -> str:
    """An OmegaConf error as ``key: message`` on one line (its message names the key on a ``full_key:`` line; for an
    interpolation that does not resolve, the key is found by resolving ``cfg``'s values one by one)."""
    text = str(exc)
    key = getattr(exc, "full_key", None) or (_unresolvable_key(cfg) if cfg is not None else None)
    message = " ".join(text.split("\n    full_key:")[0].split())
    if "interpolation" in message.lower():
        message += "; give the key a plain value, or an interpolation of another key (${algo.lr}) or of ${oc.env:NAME}"
    return f"{key}: {message}" if key else message


def _unresolvable_key(cfg: DictConfig, path: str = "") -> str | None:
    for key in cfg.keys():
        full = f"{path}{key}"
        try:
            value = cfg[key]
        except Exception:
            return full
        if isinstance(value, DictConfig) and (found := _unresolvable_key(value, f"{full}.")):
            return found
    return None


def _schema_for(cfg: DictConfig, group: str, schemas: tuple) -> type:
    """The schema of the ``algo`` or ``env`` node, chosen by its ``_target_``: only marlrun's own classes and factories
    may be built from a config, so a config someone sent (a run folder's .hydra/config.yaml) never runs other code."""
    node = cfg.get(group) if isinstance(cfg, DictConfig) else None
    if not isinstance(node, DictConfig):
        raise UserError(f"{group}: missing or not a mapping; a run config names its {group} with {group}=NAME")
    target = node.get("_target_")
    for schema in schemas:
        if target == schema._target_:
            return schema
    names = ", ".join(schema.name for schema in schemas)
    raise UserError(f"{group}._target_: '{target}' is not one of marlrun's {group}s ({names}); only marlrun's own classes are built from a config")


def typed(cfg: DictConfig) -> DictConfig:
    """``cfg`` merged onto its schemas: a config composed without them (a saved run config, read back for ``resume=``
    or ``eval``) is type-checked and refuses unknown keys exactly as a fresh run's is."""
    if not isinstance(cfg, DictConfig):
        raise UserError("the config is not a mapping of keys to values")
    try:
        base = OmegaConf.structured(RunConfig)
        base.algo = OmegaConf.structured(_schema_for(cfg, "algo", ALGO_SCHEMAS))
        base.env = OmegaConf.structured(_schema_for(cfg, "env", ENV_SCHEMAS))
        base.hardware = OmegaConf.structured(HardwareConfig)
        return OmegaConf.merge(base, cfg)
    except UserError:
        raise
    except Exception as exc:  # unknown key, wrong type, bad interpolation
        raise UserError(_one_line(exc, cfg)) from None


def _reject_unknown_keys(node: DictConfig, path: str = "") -> None:
    """Keys added with Hydra's `+key=value` that no schema knows would be ignored silently: refuse them."""
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in node.keys():
        full = f"{path}{key}"
        if known is not None and key not in known:
            raise UserError(f"unknown config key '{full}'; `marlrun train --cfg job` lists every key")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing():
            _reject_unknown_keys(child, f"{full}.")


def _reject_non_finite(obj, path: str = "") -> None:
    """inf and nan pass every range check written as a comparison the wrong way round; no key takes them."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _reject_non_finite(value, f"{path}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{path}{f.name}: must be a finite number, got {value}")


def validate(cfg: DictConfig) -> DictConfig:
    """The config typed by its schemas (see :func:`typed`), with every interpolation resolved and every schema's range
    checks run (their ``__post_init__``); raises UserError naming the first bad key."""
    cfg = typed(cfg)
    _reject_unknown_keys(cfg)
    try:
        OmegaConf.resolve(cfg)  # the values that run are the values saved and checked
        objects = OmegaConf.to_object(cfg)
    except UserError:
        raise
    except Exception as exc:  # OmegaConf wraps errors raised while building the dataclasses
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(_one_line(exc, cfg)) from None
    _reject_non_finite(objects)
    return cfg


def load_run_config(run_dir: Path) -> DictConfig:
    """The run's saved config, checked by the schemas as a fresh run's is (so it names only marlrun's own classes)."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise UserError(f"{run_dir} is not a marlrun run folder (no .hydra/config.yaml); pass the folder a run printed at its end")
    try:
        cfg = OmegaConf.load(saved)
    except Exception as exc:  # not YAML, not text
        raise UserError(f"{saved} cannot be read ({type(exc).__name__}); it is not the config a marlrun run saved") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{saved} is not a mapping of config keys (it holds a YAML {type(cfg).__name__}); it is not the config a marlrun run saved")
    old_fp32 = isinstance(cfg.get("hardware"), DictConfig) and "precision" not in cfg.hardware  # runs from before the key were fp32
    try:
        cfg = validate(cfg)
    except UserError as exc:
        raise UserError(f"{saved}: {exc}") from None
    if old_fp32:
        cfg.hardware.precision = "fp32"
    return cfg
