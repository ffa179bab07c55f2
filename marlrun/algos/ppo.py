"""PPO for many agents: IPPO and MAPPO.

Schulman et al. 2017 (PPO); de Witt et al. 2020 (IPPO: every agent's critic sees its own observation); Yu et al.,
"The Surprising Effectiveness of PPO in Cooperative Multi-Agent Games", NeurIPS 2022 (MAPPO: a centralised critic
over the global state). Each learning team has its own actor and critic (parameter-shared with a one-hot agent id
by default, or a weight set per agent). Every ``rollout_steps`` steps of the vectorised environments:

1. V(s_t) and V(s'_t) from the critic, s'_t the true successor (the final observation where an episode was cut);
2. delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t)
   A_t     = delta_t + gamma lambda (1 - end_t) A_{t+1}            GAE; end_t: the episode ended for the agent
   R_t     = A_t + V(s_t)                                          value targets
3. ``epochs`` passes over the rollout in ``minibatches`` minibatches, minimising
   L = -min(rho A, clip(rho, 1 - eps, 1 + eps) A) + c_v max(l(V - R), l(V_clip - R)) - c_e H[pi]
   with rho = pi(a|o) / pi_old(a|o), A normalised over the rollout, l the Huber loss, V and R in the units of a
   running normaliser of the value targets, and V_clip = V_old + clip(V - V_old, -eps, eps).

``critic_distribution: gmac`` (GMAC, Nam et al. 2021): V(s) is a mixture of K Gaussians; the advantages use its mean,
and the value loss is the energy distance to the targets of GMAC's sample replacement (marlrun/algos/distributional.py),
in the normaliser's units (the mixtures' locations shifted and scaled, their scales scaled); no value clip or Huber loss.

Samples of dead agents (``alive`` false) have A = 0 and no weight in any loss. Discrete actions: a categorical
policy over the actor's logits. Continuous actions: a Gaussian with state-independent log std, squashed by tanh
into the action bounds; its log-probability includes the squashing's Jacobian, and the entropy bonus is the
unsquashed Gaussian's. Teams in ``random_teams`` play uniformly random actions and do not learn.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch
from omegaconf import II
from torch import nn
from torch.nn import functional as F

from marlrun.algos.base import Algorithm, set_by_user
from marlrun.algos.seps import (Groups, SelectiveSharing, SePSConfig, TeamSharing, carry_optimizer, check_pretraining, copy_into_sets,
                                seps_warnings, sharing_mode)
from marlrun.algos.distributional import Mixture, energy_distance, equal_weights, gmac_head, sample_replacement_targets
from marlrun.envs.base import EnvSpec, VecStep
from marlrun.errors import UserError, require
from marlrun.nn import RunningNorm, SetConv2dReLU, SetLinear, SetMLP, clip_grad_norm_per_set

CRITICS = ("local", "central")
CRITIC_DISTRIBUTIONS = ("mean", "gmac")


@dataclass
class PPOConfig:
    """IPPO (critic: local) and MAPPO (critic: central). Defaults: the MAPPO paper's (Yu et al. 2022) where they do not
    depend on the environment family (clip 0.2, GAE lambda 0.95, entropy 0.01, value loss coefficient 1 with Huber
    delta 10 and value normalisation, Adam eps 1e-5, gradient clip 10, two ReLU layers of 64, parameter sharing)."""

    name: str = "ippo"
    critic: str = "local"  # local: V(o_i) (IPPO) | central: V(state, o_i) (MAPPO; the concatenated observations without a state)
    random_teams: list[str] = field(default_factory=list)  # teams played by a uniformly random policy, which do not learn (e.g. [blue] on battle)
    parameter_sharing: str = "all"  # all: one actor and one critic per team, with one-hot agent ids | none: a weight set per agent | selective: SePS, one per cluster of alike agents, found after algo.seps.pretraining_steps (true/false: all/none)
    seps: SePSConfig = field(default_factory=SePSConfig)  # selective sharing's settings (algo.seps.*)
    lr: float = 5e-4  # actor Adam learning rate
    critic_lr: float = 5e-4  # critic Adam learning rate
    adam_eps: float = 1e-5  # Adam epsilon
    lr_anneal: bool = False  # anneal both learning rates linearly to 0 over anneal_steps
    anneal_steps: int = II("total_steps")  # env steps of the anneal (default: the run's total_steps)
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE lambda
    rollout_steps: int = 128  # steps of every env copy per update
    epochs: int = 5  # passes over each rollout
    minibatches: int = 2  # minibatches per pass
    clip: float = 0.2  # PPO ratio clip (and value clip)
    value_clip: bool = True  # clip the value update around the rollout's values (mean critic only)
    value_coef: float = 1.0  # weight of the value loss
    value_huber_delta: float = 10.0  # Huber loss threshold of the value loss (mean critic only)
    entropy_coef: float = 0.01  # weight of the entropy bonus
    max_grad_norm: float = 10.0  # gradient norm clip, per weight set, actor and critic separately
    value_norm: bool = True  # running normalisation of the value targets (MAPPO's ValueNorm; gmac: the mixtures' locations and scales)
    critic_distribution: str = "mean"  # mean: V is a number, Huber loss to the GAE returns | gmac: V is a mixture of Gaussians, energy distance to GMAC's sample-replacement targets (Nam et al. 2021); the advantages use its mean
    mixture_components: int = 5  # gmac: Gaussians in the value mixture (K)
    gmac_samples: int = 128  # gmac: Gaussians carried back through the rollout by sample replacement (M): each step's target is their equal-weight mixture
    gmac_lambda: float = 0.95  # gmac: sample replacement's lambda: each carried Gaussian is kept with probability lambda per step back, else drawn afresh from V there
    log_std_init: float = -0.5  # continuous actions: initial log std of the Gaussian (before tanh)
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # ReLU layers of actor and critic
    conv_channels: list[int] = field(default_factory=list)  # image observations: the actor's k x k ReLU convolutions before its layers ([]: none)
    conv_kernel: int = 3  # side of the square convolution kernels
    greedy_eval: bool = True  # evaluation: the most likely action (true) or a sample of the policy (false)

    def __post_init__(self) -> None:
        self.parameter_sharing = sharing_mode(self.parameter_sharing)
        require(self.critic in CRITICS, "algo.critic", f"unknown critic '{self.critic}'; pick one of {', '.join(CRITICS)}")
        require(self.critic_distribution in CRITIC_DISTRIBUTIONS, "algo.critic_distribution",
                f"unknown critic distribution '{self.critic_distribution}'; pick one of {', '.join(CRITIC_DISTRIBUTIONS)}")
        for key in ("mixture_components", "gmac_samples"):
            require(getattr(self, key) >= 1, f"algo.{key}", f"must be >= 1, got {getattr(self, key)}")
        require(0.0 <= self.gmac_lambda <= 1.0, "algo.gmac_lambda", f"must be in [0, 1], got {self.gmac_lambda}")
        for key in ("lr", "critic_lr", "adam_eps", "max_grad_norm", "clip", "value_huber_delta"):
            require(getattr(self, key) > 0, f"algo.{key}", f"must be > 0, got {getattr(self, key)}")
        for key in ("gamma", "gae_lambda"):
            require(0.0 <= getattr(self, key) <= 1.0, f"algo.{key}", f"must be in [0, 1], got {getattr(self, key)}")
        for key in ("value_coef", "entropy_coef"):
            require(getattr(self, key) >= 0, f"algo.{key}", f"must be >= 0, got {getattr(self, key)}")
        for key in ("rollout_steps", "epochs", "minibatches", "conv_kernel"):
            require(getattr(self, key) >= 1, f"algo.{key}", f"must be >= 1, got {getattr(self, key)}")
        require(not isinstance(self.anneal_steps, int) or self.anneal_steps >= 1, "algo.anneal_steps", f"must be >= 1, got {self.anneal_steps}")
        require(len(self.hidden) >= 1 and min(self.hidden) >= 1, "algo.hidden", "needs at least one positive width")
        require(all(c >= 1 for c in self.conv_channels), "algo.conv_channels", "widths must be >= 1")


@dataclass
class MAPPOConfig(PPOConfig):
    """MAPPO: PPO with a centralised critic."""

    name: str = "mappo"
    critic: str = "central"


# ---------------------------------------------------------------------------- the pieces
def gae(reward, value, next_value, terminated, ended, alive, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates, [T, ...] inputs (float; ``ended`` and ``alive`` bool).

    ``next_value`` is V of each step's true successor, so a truncated episode bootstraps from its final observation
    and only ``terminated`` stops the bootstrap; ``ended`` (terminated or truncated) stops the sum. Steps in which
    an agent did not act get A = 0."""
    delta = (reward + gamma * (1.0 - terminated.float()) * next_value - value) * alive
    carry = (gamma * lam) * (~ended).float()
    advantage = torch.zeros_like(delta)
    running = torch.zeros_like(delta[0])
    for t in range(delta.shape[0] - 1, -1, -1):
        running = delta[t] + carry[t] * running
        advantage[t] = running
    return advantage * alive


def clipped_surrogate(logp: torch.Tensor, logp_old: torch.Tensor, advantage: torch.Tensor, clip: float) -> torch.Tensor:
    """-min(rho A, clip(rho, 1 - clip, 1 + clip) A) per sample, rho = exp(logp - logp_old)."""
    ratio = torch.exp(logp - logp_old)
    return -torch.min(ratio * advantage, ratio.clamp(1.0 - clip, 1.0 + clip) * advantage)


def squash(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """An unbounded Gaussian sample u -> an action in [low, high]: low + (high - low) (tanh(u) + 1) / 2."""
    return low + (high - low) * 0.5 * (torch.tanh(u) + 1.0)


def squashed_gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """log density of the action squash(u) when u ~ N(mean, exp(log_std)^2), summed over the last dim.

    log p(a) = log N(u) - log |da/du|, da/du = (high - low) / 2 (1 - tanh(u)^2), with
    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)) (stable for large |u|)."""
    gaussian = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    log_jacobian = math.log((high - low) / 2) + 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return (gaussian - log_jacobian).sum(-1)


class NoValueNorm(nn.Module):
    """Value targets as they are (``value_norm: false``)."""

    def update(self, x: torch.Tensor) -> None:
        pass

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def stats(self) -> tuple[float, float]:
        return 0.0, 1.0


class Torso(nn.Module):
    """An agent's own input [S, N, F] -> its features: with ``conv_channels``, the image observation (the first
    H * W * C entries, channels last) through k x k ReLU convolutions per weight set, then the rest (agent ids).
    One weight set (parameter sharing) runs ``nn.Conv2d`` (oneDNN: several times faster than im2col on a 13x13 view
    with few channels); several run the batched im2col convolutions of ``marlrun/nn.py``."""

    def __init__(self, n_sets: int, in_features: int, image: tuple[int, ...], conv_channels: list[int], kernel: int, set_convs: bool = False):
        super().__init__()
        self.image = tuple(image) if len(image) == 3 and conv_channels else None
        self.out_features = in_features
        self.shared = n_sets == 1 and not set_convs  # set_convs: one set in the sets' layout (selective sharing copies it to K)
        if self.image is not None:
            h, w, c = self.image
            layers = []
            for width in conv_channels:
                if min(h, w) < kernel:
                    raise UserError(f"algo.conv_channels: {len(conv_channels)} convolutions of {kernel}x{kernel} do not fit a {image[0]}x{image[1]} observation")
                layers += [nn.Conv2d(c, width, kernel), nn.ReLU(inplace=True)] if self.shared else [SetConv2dReLU(n_sets, c, width, kernel, (h, w))]
                c, h, w = width, h - kernel + 1, w - kernel + 1
            self.convs = nn.Sequential(*layers)
            self.out_features = c * h * w + in_features - math.prod(self.image)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image is None:
            return x
        size = math.prod(self.image)
        image = x[..., :size].reshape(*x.shape[:2], *self.image)  # [S, N, H, W, C]
        if self.shared:  # channels first for nn.Conv2d, back to channels last so the flat order matches the sets' path
            z = self.convs(image[0].permute(0, 3, 1, 2)).permute(0, 2, 3, 1).unsqueeze(0).flatten(2)
        else:
            z = self.convs(image).flatten(2)
        return torch.cat([z, x[..., size:].to(z.dtype)], dim=-1)


class Critic(nn.Module):
    """V per weight set from the agent's own input and, for a centralised critic, a shared input (the state): one
    number, or ``outputs`` of them (a mixture's parameters).

    The shared input enters through its own first-layer weights, applied once per state row and gathered to the
    agents' samples (``rows``), so the state is never copied once per agent."""

    def __init__(self, n_sets: int, torso: Torso, state_features: int, hidden: list[int], outputs: int = 1):
        super().__init__()
        self.torso = torso
        self.own = SetLinear(n_sets, torso.out_features, hidden[0])
        self.state = nn.Parameter(torch.empty(n_sets, state_features, hidden[0])) if state_features else None
        if self.state is not None:
            nn.init.uniform_(self.state, -1 / math.sqrt(state_features), 1 / math.sqrt(state_features))
        self.rest = SetMLP(n_sets, hidden[0], hidden[1:], outputs)

    def forward(self, own: torch.Tensor, state: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """own [S, N, F], state [R, F_s], rows [N] (the state row of each sample) -> V [S, N] (or [S, N, outputs])
        in float32."""
        h = self.own(self.torso(own))
        if self.state is not None:
            S, Fs, H = self.state.shape
            embedded = (state.to(h.dtype) @ self.state.to(h.dtype).permute(1, 0, 2).reshape(Fs, S * H)).view(-1, S, H).transpose(0, 1)
            h = h + embedded[:, rows]
        out = self.rest(h.relu()).float()
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def orthogonal_init(module: nn.Module, gain: float, last_gain: float) -> None:
    """Orthogonal weights per set (``gain``; the last layer ``last_gain``) and zero biases, as PPO implementations do."""
    linears = [m for m in module.modules() if isinstance(m, SetLinear)]
    for i, layer in enumerate(linears):
        for w in layer.weight.data:  # [in, out] per set
            nn.init.orthogonal_(w, gain=last_gain if i == len(linears) - 1 else gain)
        layer.bias.data.zero_()


@dataclass
class Team:
    name: str
    agents: torch.Tensor  # [n] columns of the env's [E, A] tensors
    obs_size: int  # real entries of each member's flat observation
    learns: bool
    groups: Groups  # which weight set each member uses: one for all, one each, or one per SePS cluster
    ids: bool  # members see their one-hot id (whenever they may share a set)

    @property
    def n(self) -> int:
        return len(self.agents)

    @property
    def n_sets(self) -> int:
        return self.groups.S

    def to_sets(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n, ...] -> [S, N, ...]: the samples of each weight set (one for all: N = B * n; one each: N = B)."""
        return self.groups.split(x)

    def from_sets(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        """[S, N, ...] -> [B, n, ...]."""
        return self.groups.join(y, batch)

    def state_rows(self, batch: int, device: torch.device) -> torch.Tensor:
        """[N]: the row of [B] shared inputs (states) each of a set's N samples belongs to."""
        return self.groups.rows(batch, device)


# ---------------------------------------------------------------------------- the algorithm
class PPO(Algorithm):
    suggestion = ""
    state_keys = ("seps", "nets", "optimizer", "generator", "rollout", "acted", "gradient_steps", "updates")

    @classmethod
    def ineffective(cls, cfg: PPOConfig, spec: EnvSpec) -> list[str]:
        unused = seps_warnings(cfg.parameter_sharing, cfg.seps)
        if cfg.conv_channels and len(spec.obs_shape) != 3:
            unused.append(f"algo.conv_channels={list(cfg.conv_channels)} has no effect: env={spec.name}'s observations are vectors, not images")
        keys = ("value_clip", "value_huber_delta") if cfg.critic_distribution == "gmac" else ("mixture_components", "gmac_samples", "gmac_lambda")
        unused += [f"algo.{key}={getattr(cfg, key)} has no effect with algo.critic_distribution={cfg.critic_distribution}"
                   for key in keys if set_by_user(cfg, key)]
        return unused

    @classmethod
    def check_run(cls, cfg: PPOConfig, total_steps: int, num_envs: int) -> None:
        check_pretraining(cfg.parameter_sharing, cfg.seps, total_steps)
        per_update = cfg.rollout_steps * num_envs
        if per_update > total_steps:
            raise UserError(f"algo.rollout_steps={cfg.rollout_steps} x hardware.num_envs={num_envs} = {per_update:,} env steps per update, "
                            f"more than total_steps={total_steps:,}: no update would ever happen; lower algo.rollout_steps")
        if cfg.minibatches > per_update:
            raise UserError(f"algo.minibatches={cfg.minibatches} cannot split a rollout of {per_update:,} samples per agent "
                            f"(algo.rollout_steps x hardware.num_envs); use at most {per_update}")
        if cfg.lr_anneal and cfg.anneal_steps < total_steps:
            raise UserError(f"algo.anneal_steps={cfg.anneal_steps:,} < total_steps={total_steps:,}: the learning rate reaches 0 before "
                            "the run ends and the rest of it learns nothing; leave algo.anneal_steps at its default (total_steps), or "
                            "algo.lr_anneal=false (a resumed run keeps its anneal_steps: an annealed run cannot learn past them)")

    @classmethod
    def planned_bytes(cls, cfg: PPOConfig, spec: EnvSpec, num_envs: int) -> dict[str, int]:
        """The rollout it collects before each update: every step's observations and successors (and the critic's
        shared inputs, for a central critic), float32."""
        obs = math.prod(spec.obs_shape)
        shared = 0
        if cfg.critic == "central":
            shared = math.prod(spec.state_shape) if "state" in spec.capabilities else sum(spec.agent_obs_sizes or (obs,) * spec.n_agents)
        per_step = num_envs * 4 * (2 * spec.n_agents * obs + 2 * shared + 8 * spec.n_agents)
        return {"rollout": cfg.rollout_steps * per_step}

    memory_keys = {"seps": "algo.seps.samples (the transitions selective sharing keeps per agent)", "rollout": "algo.rollout_steps x hardware.num_envs (the rollout)", "actors": "algo.hidden, algo.conv_channels (the networks)",
                   "critics": "algo.hidden, algo.conv_channels (the networks)", "optimizer": "algo.hidden, algo.conv_channels (the networks)"}
    def __init__(self, cfg: PPOConfig, spec: EnvSpec, num_envs: int, device: torch.device, seed: int, precision: str = "fp32"):
        super().__init__(cfg, spec, num_envs, device, seed, precision)
        self.central = cfg.critic == "central"
        self.discrete = spec.discrete_actions
        self.K = spec.n_actions
        self.low, self.high = spec.action_bounds
        self.use_state = self.central and "state" in spec.capabilities
        self.distributional = cfg.critic_distribution == "gmac"

        unknown = sorted(set(cfg.random_teams) - set(spec.team_names))
        if unknown:
            raise UserError(f"algo.random_teams: env={spec.name} has no team {', '.join(map(repr, unknown))}; its teams are {', '.join(spec.team_names)}")
        self.teams: list[Team] = []
        sharing = cfg.parameter_sharing
        for team_name in spec.team_names:
            members = spec.team_members(team_name)
            sizes = {spec.obs_size(a) for a in members}
            if len(sizes) > 1:
                raise UserError(f"algo={cfg.name}: team '{team_name}' of env={spec.name} mixes observation sizes {sorted(sizes)}; a team's agents share a policy shape")
            groups = Groups.of("none" if sharing == "none" else "all", len(members)).to(device)  # selective: one set until clustering
            self.teams.append(Team(team_name, torch.tensor(members, device=device), sizes.pop(), team_name not in cfg.random_teams, groups, sharing != "none"))
        self.learners = [t for t in self.teams if t.learns]
        if not self.learners:
            raise UserError(f"algo.random_teams: every team of env={spec.name} is random; leave at least one to learn")
        # selective sharing: each learning team of several agents is clustered once, after pre-training
        self.seps = TeamSharing({t.name: SelectiveSharing(cfg.seps, t.n, t.obs_size, self.K, device)
                                 for t in self.learners if sharing == "selective" and t.n > 1})

        width = math.prod(spec.obs_shape)
        self.joint_index = torch.cat([a * width + torch.arange(spec.obs_size(a)) for a in range(spec.n_agents)]).to(device)
        state_features = 0
        if self.central:
            state_features = math.prod(spec.state_shape) if self.use_state else len(self.joint_index)
        self.state_features = state_features
        self.actors, self.critics, self.log_stds, self.value_norms = nn.ModuleList(), nn.ModuleList(), nn.ParameterList(), nn.ModuleList()
        for team in self.learners:
            actor, critic_net, log_std = self.team_networks(team)
            self.actors.append(actor)
            self.critics.append(critic_net)
            self.log_stds.append(log_std)
            self.value_norms.append(RunningNorm() if cfg.value_norm else NoValueNorm())
        self.nets = nn.ModuleDict({"actors": self.actors, "critics": self.critics, "log_stds": self.log_stds, "value_norms": self.value_norms}).to(device)
        self.optimizer = self.make_optimizer(cfg.lr, cfg.critic_lr)

        self.acted: deque = deque()  # what act() sampled (raw actions, log-probs), until observe() gets the step
        self.rollout: list[dict] = []
        self.gradient_steps = 0
        self.updates = 0

    def team_networks(self, team: Team) -> tuple[nn.Module, nn.Module, nn.Parameter]:
        """A team's actor, critic and Gaussian log std, one weight set per set of ``team.groups``."""
        cfg = self.cfg
        own = team.obs_size + (team.n if team.ids and team.n > 1 else 0)
        set_convs = team.name in self.seps  # selective: even one set in the sets' layout, so that it copies to K
        actor_torso = Torso(team.n_sets, own, self.spec.obs_shape, list(cfg.conv_channels), cfg.conv_kernel, set_convs)
        actor = nn.Sequential(actor_torso, SetMLP(team.n_sets, actor_torso.out_features, list(cfg.hidden), self.K))
        # the critic reads its inputs flat: convolutions there would double the update's cost for a value estimate
        critic_net = Critic(team.n_sets, Torso(team.n_sets, own, self.spec.obs_shape, [], cfg.conv_kernel), self.state_features, list(cfg.hidden),
                            3 * cfg.mixture_components if self.distributional else 1)
        orthogonal_init(actor, math.sqrt(2), 0.01)
        orthogonal_init(critic_net, math.sqrt(2), 1.0)
        log_std = nn.Parameter(torch.full((team.n_sets, 1, self.K), float(cfg.log_std_init), device=self.device))
        return actor.to(self.device), critic_net.to(self.device), log_std

    def make_optimizer(self, lr: float, critic_lr: float) -> torch.optim.Optimizer:
        actor_params = list(self.actors.parameters()) + (list(self.log_stds.parameters()) if not self.discrete else [])
        return torch.optim.Adam([{"params": actor_params, "lr": lr}, {"params": list(self.critics.parameters()), "lr": critic_lr}],
                                eps=self.cfg.adam_eps, fused=True)

    # ------------------------------------------------------------------ selective sharing
    def use_clusters(self, name: str, assignment: torch.Tensor) -> None:
        """Team ``name`` from one weight set to one per cluster, each a copy of the shared one (its outputs unchanged),
        Adam's moments carried over."""
        k = next(i for i, t in enumerate(self.learners) if t.name == name)
        team = self.learners[k]
        old = (self.actors[k], self.critics[k], self.log_stds[k])
        old_groups, team.groups = team.groups, Groups(assignment).to(self.device)
        # the step acted on but not yet observed: its samples and log-probs (the same under the copies) in the new layout
        relaid = lambda x: team.groups.split(old_groups.join(x, self.num_envs))  # noqa: E731
        self.acted = deque([[(relaid(raw), relaid(logp)) if i == k else (raw, logp) for i, (raw, logp) in enumerate(sampled)] for sampled in self.acted])
        new = self.team_networks(team)
        copy_into_sets(old[0], new[0])
        copy_into_sets(old[1], new[1])
        with torch.no_grad():
            new[2].copy_(old[2].expand_as(new[2]))
        self.actors[k], self.critics[k], self.log_stds[k] = new
        pairs = list(zip(old[0].parameters(), new[0].parameters())) + list(zip(old[1].parameters(), new[1].parameters())) + [(old[2], new[2])]
        replaced = {id(q) for _, q in pairs}
        unchanged = [p for p in self.nets.parameters() if id(p) not in replaced]
        optimizer = self.make_optimizer(self.optimizer.param_groups[0]["lr"], self.optimizer.param_groups[1]["lr"])
        carry_optimizer(self.optimizer, optimizer, pairs + [(p, p) for p in unchanged])
        self.optimizer = optimizer

    def cluster_due(self, env_steps: int) -> dict[str, torch.Tensor]:
        """Cluster every team whose pre-training is over; the clustering's scalars."""
        metrics: dict[str, torch.Tensor] = {}
        for team in self.learners:
            part = self.seps.get(team.name)
            if part is None or not part.due(env_steps):
                continue
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator, device=self.device))
            names = [self.spec.agent_names[a] for a in team.agents.tolist()]
            self.use_clusters(team.name, part.cluster(seed, env_steps, names))
            metrics.update(part.metrics(team.name if len(self.learners) > 1 else None))
            self.pending_files["seps_clusters.json"] = self.seps.records()
        return metrics

    def load_state_dict(self, state: dict, generators: bool = True) -> None:
        for name, assignment in self.seps.clustered(state.get("seps", {})).items():
            self.use_clusters(name, assignment)  # the K weight sets, before their weights are restored
        super().load_state_dict(state, generators)

    @property
    def uses_state(self) -> bool:
        return self.use_state  # the runner has the environment provide its state only then

    # ------------------------------------------------------------------ inputs
    def own_input(self, team: Team, obs: torch.Tensor) -> torch.Tensor:
        """[B, A, ...] -> [B, n, F]: each member's real observation entries (and its one-hot id under sharing)."""
        x = obs.flatten(2)[:, team.agents, : team.obs_size].float()
        if team.ids and team.n > 1:
            ids = torch.eye(team.n, device=x.device).expand(x.shape[0], -1, -1)
            x = torch.cat([x, ids], dim=-1)
        return x

    def state_input(self, obs: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor | None:
        """[B, F_s]: the centralised critic's shared input (the global state, else every agent's observation)."""
        if not self.central:
            return None
        if self.use_state:
            return state.flatten(1).float()
        return obs.flatten(1).index_select(1, self.joint_index).float()

    def distribution(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """The actor's outputs [S, N, K] (logits, or the Gaussian's means) in float32."""
        return self.actors[k](x).float()

    def log_prob_entropy(self, k: int, out: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(raw) and the entropy, [S, N]; ``raw``: the action index, or the unsquashed Gaussian sample."""
        if self.discrete:
            logp = out.log_softmax(-1)
            return logp.gather(-1, raw.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)
        log_std = self.log_stds[k].expand_as(out)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum(-1)
        return squashed_gaussian_log_prob(raw, out, log_std, self.low, self.high), entropy

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, env_steps: int, greedy: bool = False, context: dict | None = None) -> torch.Tensor:
        E, A = obs.shape[:2]
        if self.discrete:
            actions = torch.zeros(E, A, dtype=torch.long, device=self.device)
        else:
            actions = torch.zeros(E, A, self.K, device=self.device)
        sampled = []
        deterministic = greedy and self.cfg.greedy_eval
        for team in self.teams:
            if not team.learns:
                shape = (E, team.n) if self.discrete else (E, team.n, self.K)
                if self.discrete:
                    random = torch.randint(0, self.K, shape, generator=self.generator, device=self.device)
                else:
                    random = self.low + (self.high - self.low) * torch.rand(shape, generator=self.generator, device=self.device)
                actions[:, team.agents] = random
                continue
            k = self.learners.index(team)
            with self.autocast():
                out = self.distribution(k, team.to_sets(self.own_input(team, obs)))
            if self.discrete:
                if deterministic:
                    raw = out.argmax(-1)
                else:
                    u = torch.rand(out.shape, generator=self.generator, device=self.device).clamp_(min=1e-20)
                    raw = (out - torch.log(-torch.log(u))).argmax(-1)  # Gumbel-max: a sample of softmax(logits)
                action = raw
            else:
                if deterministic:
                    raw = out
                else:
                    noise = torch.randn(out.shape, generator=self.generator, device=self.device)
                    raw = out + self.log_stds[k].exp() * noise
                action = squash(raw, self.low, self.high)
            actions[:, team.agents] = team.from_sets(action, E)
            if not greedy:
                sampled.append((raw, self.log_prob_entropy(k, out, raw)[0]))
        if not greedy:
            self.acted.append(sampled)
        return actions

    # ------------------------------------------------------------------ collecting
    def observe(self, obs: torch.Tensor, actions: torch.Tensor, step: VecStep, context: dict | None = None) -> dict:
        sampled = self.acted.popleft()
        for team in self.learners:
            part = self.seps.get(team.name)
            if part is not None and part.assignment is None:
                action = actions[:, team.agents]
                part.keep(obs.flatten(2)[:, team.agents, : team.obs_size], F.one_hot(action, self.K) if self.discrete else action,
                          step.reward[:, team.agents], step.next_obs.flatten(2)[:, team.agents, : team.obs_size], step.alive[:, team.agents])
        state = (context or {}).get("state")
        self.rollout.append({
            "obs": obs, "next_obs": step.next_obs, "reward": step.reward, "terminated": step.terminated,
            "ended": step.terminated | step.truncated | step.episode_end[:, None], "alive": step.alive,
            "state": self.state_input(obs, state), "next_state": self.state_input(step.next_obs, step.next_state),
            "raw": [raw for raw, _ in sampled], "logp": [logp for _, logp in sampled],
        })
        return {}

    # ------------------------------------------------------------------ learning
    def values(self, k: int, team: Team, own: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """Normalised V [S, N] for own inputs [B, n, F] and shared inputs [B, F_s]."""
        rows = team.state_rows(own.shape[0], own.device) if state is not None else None
        return self.critics[k](team.to_sets(own), state, rows)

    def update(self, env_steps: int) -> dict[str, torch.Tensor]:
        if len(self.rollout) < self.cfg.rollout_steps:
            return {}
        steps, self.rollout = self.rollout, []
        if self.cfg.lr_anneal:
            frac = max(0.0, 1.0 - env_steps / self.cfg.anneal_steps)
            self.optimizer.param_groups[0]["lr"], self.optimizer.param_groups[1]["lr"] = self.cfg.lr * frac, self.cfg.critic_lr * frac
        T, E = len(steps), self.num_envs
        field = lambda key: torch.stack([s[key] for s in steps])  # noqa: E731  [T, E, ...]
        obs, next_obs = field("obs").flatten(0, 1), field("next_obs").flatten(0, 1)  # [T * E, A, ...]
        state = field("state").flatten(0, 1) if self.central else None
        next_state = field("next_state").flatten(0, 1) if self.central else None
        per_agent = {key: field(key) for key in ("reward", "terminated", "ended", "alive")}  # [T, E, A], stacked once for every team
        metrics: dict[str, list[torch.Tensor]] = {}
        for k, team in enumerate(self.learners):
            pick = lambda key: per_agent[key][:, :, team.agents]  # noqa: E731  [T, E, n]
            own, next_own = self.own_input(team, obs), self.own_input(team, next_obs)  # [T * E, n, F]
            raw = torch.stack([s["raw"][k] for s in steps])  # [T, S, N_E, ...]
            logp_old = torch.stack([s["logp"][k] for s in steps])  # [T, S, N_E]
            norm = self.value_norms[k]
            with torch.no_grad(), self.autocast():
                value_old = self.values(k, team, own, state)  # [S, N], normalised (gmac: [S, N, 3K], a normalised mixture's parameters)
                next_out = self.values(k, team, next_own, next_state)
            to_tn = lambda v: team.from_sets(v, T * E).reshape(T, E, team.n, *v.shape[2:])  # noqa: E731  [S, N, ...] -> [T, E, n, ...]
            # every per-sample tensor as [S, N, ...]: the layout of the team's weight sets
            flat = lambda x: team.to_sets(x.reshape(T * E, team.n, *x.shape[3:]))  # noqa: E731
            alive = pick("alive").float()
            padding = team.groups.sample_mask(T * E)  # selective sharing: a cluster's empty slots learn nothing
            alive_sets = flat(alive) if padding is None else flat(alive) * padding
            if self.distributional:  # V(s) and V(s') as mixtures in the returns' units; the advantages use their means
                value_mix, next_mix = self.value_mixture(k, value_old), self.value_mixture(k, next_out)
                value, next_value = to_tn(value_mix.mean()), to_tn(next_mix.mean())
            else:
                value, next_value = to_tn(norm.denormalize(value_old)), to_tn(norm.denormalize(next_out))
            advantage = gae(pick("reward"), value, next_value, pick("terminated"), pick("ended"), alive, self.cfg.gamma, self.cfg.gae_lambda)
            if self.distributional:
                target_mu, target_sigma = sample_replacement_targets(
                    pick("reward"), pick("terminated"), pick("ended"), Mixture(*map(to_tn, next_mix)),
                    self.cfg.gamma, self.cfg.gmac_lambda, self.cfg.gmac_samples, self.generator)  # [T, E, n, M]
                norm.update(target_mu.mean(-1)[alive.bool()])
                shift, scale = norm.stats()
                targets = {"target_mu": flat((target_mu - shift) / scale), "target_sigma": flat(target_sigma / scale)}
                living_values = alive_sets.bool()
                metrics.setdefault("train/value_mean", []).append(value_mix.mean()[living_values].mean())
                metrics.setdefault("train/value_std", []).append(value_mix.std()[living_values].mean())
                metrics.setdefault("train/target_std", []).append(flat(equal_weights(target_mu, target_sigma).std())[living_values].mean())
            else:
                returns = advantage + value
                norm.update(returns[alive.bool()])
                targets = {"target": flat(norm.normalize(returns)), "value_old": value_old}
            living = advantage[alive.bool()]
            advantage = (advantage - living.mean()) / (living.std() + 1e-8) * alive
            samples = {
                "advantage": flat(advantage), "alive": alive_sets, **targets,
                "raw": self.sets_from_steps(team, raw), "logp_old": self.sets_from_steps(team, logp_old),
            }
            own_sets = team.to_sets(own)
            rows = team.state_rows(T * E, own.device) if self.central else None
            N = own_sets.shape[1]
            for _ in range(self.cfg.epochs):
                order = torch.randperm(N, generator=self.generator, device=self.device)
                for index in order.chunk(self.cfg.minibatches):
                    m = self.minibatch_loss(k, own_sets[:, index], state, rows[index] if rows is not None else None,
                                            {key: v[:, index] for key, v in samples.items()})
                    for key, value in m.items():
                        metrics.setdefault(key, []).append(value)
                    self.gradient_steps += 1
        self.updates += 1
        out = {key: torch.stack(values).mean() for key, values in metrics.items()}
        if self.seps:  # between rollouts: the next one is collected with the new sets
            out.update(self.cluster_due(env_steps))
        return out

    @torch.no_grad()
    def return_distribution(self, obs: torch.Tensor, context: dict | None = None) -> list[tuple[str, torch.Tensor, Mixture]] | None:
        """The critic's return distribution at ``obs`` [E, A, ...] for each learning team: (its name, its agents [n],
        the mixture [E, n, K] in the returns' units); None for a mean critic."""
        if not self.distributional:
            return None
        state = self.state_input(obs, (context or {}).get("state"))
        teams = []
        for k, team in enumerate(self.learners):
            with self.autocast():
                out = self.values(k, team, self.own_input(team, obs), state)
            teams.append((team.name, team.agents, Mixture(*(team.from_sets(x, obs.shape[0]) for x in self.value_mixture(k, out)))))
        return teams

    def value_mixture(self, k: int, out: torch.Tensor) -> Mixture:
        """Critic k's output [S, N, 3K] (normalised) -> its mixture in the returns' units."""
        shift, scale = self.value_norms[k].stats()
        return gmac_head(out).affine(scale, shift)

    @staticmethod
    def sets_from_steps(team: Team, x: torch.Tensor) -> torch.Tensor:
        """[T, S, N_E, ...] (act's layout per step) -> [S, T * N_E, ...], the samples in step order."""
        return x.transpose(0, 1).flatten(1, 2)

    def minibatch_loss(self, k: int, own: torch.Tensor, state, rows, mb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        alive = mb["alive"]
        count = alive.sum(1).clamp(min=1.0)
        mean = lambda x: ((x * alive).sum(1) / count).sum()  # noqa: E731  each set's mean over its living samples
        with self.autocast():
            out = self.distribution(k, own)
            value = self.critics[k](own, state, rows)
        logp, entropy = self.log_prob_entropy(k, out, mb["raw"])
        policy_loss = clipped_surrogate(logp, mb["logp_old"], mb["advantage"], self.cfg.clip)
        if self.distributional:  # the energy distance to the target mixture, less its constant E|Y - Y'|
            value_loss = energy_distance(gmac_head(value), equal_weights(mb["target_mu"], mb["target_sigma"]), target_term=False)
        else:
            value_loss = F.huber_loss(value, mb["target"], reduction="none", delta=self.cfg.value_huber_delta)
            if self.cfg.value_clip:
                clipped = mb["value_old"] + (value - mb["value_old"]).clamp(-self.cfg.clip, self.cfg.clip)
                value_loss = torch.max(value_loss, F.huber_loss(clipped, mb["target"], reduction="none", delta=self.cfg.value_huber_delta))
        loss = mean(policy_loss) + self.cfg.value_coef * mean(value_loss) - self.cfg.entropy_coef * mean(entropy)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        actor_params = list(self.actors[k].parameters()) + ([self.log_stds[k]] if not self.discrete else [])
        for params in (actor_params, list(self.critics[k].parameters())):
            if alive.shape[0] == 1:  # one shared set: its convolutions (nn.Conv2d) have no set dimension
                torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
            else:
                clip_grad_norm_per_set(params, self.cfg.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            log_ratio = logp - mb["logp_old"]
            sets = alive.shape[0]
            return {
                "train/policy_loss": mean(policy_loss).detach() / sets, "train/value_loss": mean(value_loss).detach() / sets,
                "train/entropy": mean(entropy).detach() / sets,
                "train/approx_kl": mean(log_ratio.exp() - 1 - log_ratio) / sets,  # Schulman's low-variance estimator
                "train/clip_fraction": mean(((log_ratio.exp() - 1).abs() > self.cfg.clip).float()) / sets,
            }
