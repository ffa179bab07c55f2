"""MADDPG: decentralised actors, one centralised critic per agent (Lowe et al., NeurIPS 2017).

Agent i has an actor mu_i(o_i) and a critic Q_i(x, a_1..a_N), where x holds every
agent's observation (a ``ddpg`` agent's critic sees only its own (o_i, a_i)).
Every ``update_interval`` env steps, on one minibatch from the joint replay:

    a'_j = mu'_j(o'_j)                                               target actors
    y_i  = r_i + gamma * (1 - d_i) * Q'_i(x', a'_1..a'_N)            target critics
    L(Q_i)  = mean (Q_i(x, a_1..a_N) - y_i)^2
    L(mu_i) = -mean Q_i(x, a_1..mu_i(o_i)..a_N) + reg * mean(logits_i^2)   (the others' actions from replay)
    theta'_i <- (1 - tau) theta'_i + tau theta_i                     polyak averaging

Discrete actions: mu_i(o_i) is a Gumbel-softmax sample of the actor's logits
(soft as in the reference, or a hard one-hot with the straight-through
gradient). The environment gets the index of the sample while exploring and of
the largest logit when greedy; replay stores its one-hot. Continuous actions,
``continuous_policy``:

    gumbel  the soft Gumbel-softmax sample itself is the physical action, as in
            openai's MADDPG on its particle worlds: mpe2 moves an agent by
            (a_2 - a_1, a_4 - a_3) x sensitivity, so the soft sample gives graded
            moves; greedy acting takes softmax(logits) without noise
    noise   a sigmoid scaled to the action bounds, plus Gaussian noise while
            exploring

``critic_distribution=mixture`` (Shahriari et al. 2022, "Revisiting Gaussian Mixture Critics in Off-Policy
Reinforcement Learning: a Sample-Based Approach"; Acme's MoG critic): Q_i is a mixture of Gaussians, and

    z_j ~ Q'_i(x', a'_1..a'_N), j = 1..M                            samples of the target critic's mixture
    L(Q_i)  = -mean_j log Q_i(x, a_1..a_N)(r_i + gamma (1 - d_i) z_j)    cross-entropy to the sampled targets
    L(mu_i) = -mean E[Q_i(x, a_1..mu_i(o_i)..a_N)] + reg * mean(logits_i^2)     the mixture's mean

``greedy_eval=false`` evaluates with the behaviour policy's sample instead of
the greedy action: openai's MADDPG always acts with the sample, in its
benchmark runs too.

Agents with the same observation size and critic kind form a group whose
actors (and critics) are one batched module with a weight set per agent;
Python loops only over groups (two on simple_adversary, one on pursuit).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from marlrun.algos.base import Algorithm, set_by_user
from marlrun.algos.distributional import Mixture, acme_head
from marlrun.envs.base import EnvSpec, VecStep
from marlrun.errors import UserError, require, require_batch_fits
from marlrun.nn import SetMLP, clip_grad_norm_per_set
from marlrun.replay import JointReplay

CRITICS = ("maddpg", "ddpg")
CONTINUOUS_POLICIES = ("noise", "gumbel")
CRITIC_DISTRIBUTIONS = ("mean", "mixture")


@dataclass
class MADDPGConfig:
    """MADDPG (Lowe et al., 2017). Defaults are the reference settings (openai/maddpg) for the MPE games."""

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
    gumbel_temperature: float = 1.0  # discrete actions: temperature of the Gumbel-softmax of the actor's logits
    gumbel_hard: bool = False  # discrete actions: straight-through one-hot samples instead of soft ones (the reference's)
    noise_std: float = 0.1  # continuous_policy=noise: Gaussian exploration noise, as a fraction of the action range
    continuous_policy: str = "noise"  # continuous actions: noise (a sigmoid in the action bounds, plus Gaussian noise while exploring) | gumbel (the soft Gumbel-softmax sample of the logits is the action vector itself, as in openai's MADDPG; greedy: softmax of the logits)
    critic_distribution: str = "mean"  # mean: Q is a number, squared TD error | mixture: Q is a mixture of Gaussians, cross-entropy to samples r + gamma z with z drawn from the target critic's mixture (Shahriari et al. 2022); the actors maximise its mean
    mixture_components: int = 5  # mixture: Gaussians in each critic's mixture (Acme's default)
    mixture_init_scale: float = 1e-3  # mixture: the components' standard deviation at initialisation (Acme's default)
    mixture_samples: int = 20  # mixture: target samples z drawn per transition and agent
    greedy_eval: bool = True  # evaluation acts greedily (true) or with the behaviour policy's sample (false: the soft Gumbel sample, a Gumbel-max sample of discrete actions, the noisy action), as openai's MADDPG acts in its benchmark runs

    def __post_init__(self) -> None:
        require(self.continuous_policy in CONTINUOUS_POLICIES, "algo.continuous_policy",
                f"unknown policy '{self.continuous_policy}'; pick one of {', '.join(CONTINUOUS_POLICIES)}")
        require(self.critic in CRITICS, "algo.critic", f"unknown critic '{self.critic}'; pick one of {', '.join(CRITICS)}")
        require(self.critic_distribution in CRITIC_DISTRIBUTIONS, "algo.critic_distribution",
                f"unknown critic distribution '{self.critic_distribution}'; pick one of {', '.join(CRITIC_DISTRIBUTIONS)}")
        for key in ("mixture_components", "mixture_samples"):
            require(getattr(self, key) >= 1, f"algo.{key}", f"must be >= 1, got {getattr(self, key)}")
        require(self.mixture_init_scale > 0, "algo.mixture_init_scale", f"must be > 0, got {self.mixture_init_scale}")
        for key in ("actor_lr", "critic_lr", "max_grad_norm", "gumbel_temperature"):
            require(getattr(self, key) > 0, f"algo.{key}", f"must be > 0, got {getattr(self, key)}")
        require(0.0 <= self.gamma <= 1.0, "algo.gamma", "must be in [0, 1]")
        require(0.0 < self.tau <= 1.0, "algo.tau", "must be in (0, 1]")
        for key in ("batch_size", "buffer_size", "update_interval"):
            require(getattr(self, key) >= 1, f"algo.{key}", f"must be >= 1, got {getattr(self, key)}")
        require(self.learning_starts >= 0, "algo.learning_starts", "must be >= 0")
        require_batch_fits(self.batch_size, self.buffer_size)
        require(len(self.hidden) >= 1 and min(self.hidden) >= 1, "algo.hidden", "needs at least one positive width")
        require(self.actor_reg >= 0, "algo.actor_reg", "must be >= 0")
        require(self.noise_std >= 0, "algo.noise_std", "must be >= 0")


def gumbel_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel samples -log(-log U) shaped like ``like``."""
    u = torch.rand(like.shape, generator=generator, device=like.device).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def gumbel_softmax(logits: torch.Tensor, temperature: float, hard: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """softmax((logits + Gumbel noise) / temperature); ``hard``: its one-hot, with the soft sample's gradient."""
    y = torch.softmax((logits + gumbel_noise(logits, generator)) / temperature, dim=-1)
    if hard:
        y_hard = F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
        y = y_hard - y.detach() + y  # straight-through: forward is one-hot, backward is the soft sample's
    return y


@dataclass
class Group:
    """Agents sharing an observation size and a critic kind; index k of ``MADDPG.actors`` etc."""

    agents: torch.Tensor  # [n] indices into the env's agents
    obs_size: int
    central: bool  # MADDPG critic over everyone (True) or DDPG critic over its own obs and action (False)


class MADDPG(Algorithm):
    requires = frozenset({"fixed_agents"})
    suggestion = "Use algo=super_ddqn for environments whose agents leave mid-episode."
    auto_bf16 = False  # 64-unit MLPs: the casts cost more than bf16 saves (2,501 env steps/s in fp32, 1,735 in bf16)
    state_keys = ("nets", "actor_optimizer", "critic_optimizer", "generator", "next_update", "gradient_steps", "replay")

    @classmethod
    def ineffective(cls, cfg: MADDPGConfig, spec: EnvSpec) -> list[str]:
        unused = [f"algo.{key}={getattr(cfg, key)} has no effect with algo.critic_distribution=mean"
                  for key in ("mixture_components", "mixture_init_scale", "mixture_samples") if cfg.critic_distribution == "mean" and set_by_user(cfg, key)]
        if spec.discrete_actions:
            return unused + [f"algo.{key}={getattr(cfg, key)} has no effect: env={spec.name}'s actions are discrete (it applies to continuous actions)"
                             for key in ("continuous_policy", "noise_std") if set_by_user(cfg, key)]
        return unused + [f"algo.{key}={getattr(cfg, key)} has no effect with algo.continuous_policy=noise (continuous actions)"
                         for key in ("gumbel_temperature", "gumbel_hard") if cfg.continuous_policy == "noise" and set_by_user(cfg, key)]

    memory_keys = {"replay": "algo.buffer_size (joint replay)", "nets": "algo.hidden (actors and critics)"}
    def __init__(self, cfg: MADDPGConfig, spec: EnvSpec, num_envs: int, device: torch.device, seed: int, precision: str = "fp32"):
        super().__init__(cfg, spec, num_envs, device, seed, precision)
        self.n_agents = A = spec.n_agents
        self.n_actions = K = spec.n_actions
        self.discrete = spec.discrete_actions
        self.low, self.high = spec.action_bounds
        self.gumbel_actions = not self.discrete and cfg.continuous_policy == "gumbel"
        self.mixture = cfg.critic_distribution == "mixture"
        q_outputs = 3 * cfg.mixture_components if self.mixture else 1
        if self.gumbel_actions and (self.low, self.high) != (0.0, 1.0):
            raise UserError(f"algo.continuous_policy=gumbel: env={spec.name}'s actions lie in [{self.low}, {self.high}], not the "
                            "[0, 1] of a softmax; use algo.continuous_policy=noise")

        unknown = sorted(set(cfg.ddpg_teams) - set(spec.team_names))
        if unknown:
            raise UserError(f"algo.ddpg_teams: env={spec.name} has no team {', '.join(map(repr, unknown))}; its teams are {', '.join(spec.team_names)}")
        central = [cfg.critic == "maddpg" and team not in cfg.ddpg_teams for team in spec.teams]

        # Joint observation x: every agent's real entries, concatenated (padding dropped).
        width = math.prod(spec.obs_shape)
        self.joint_index = torch.cat([a * width + torch.arange(spec.obs_size(a)) for a in range(A)]).to(device)
        joint_size = len(self.joint_index) + A * K

        self.groups: list[Group] = []
        actors, critics = nn.ModuleList(), nn.ModuleList()
        for obs_size, is_central in dict.fromkeys((spec.obs_size(a), central[a]) for a in range(A)):
            agents = [a for a in range(A) if (spec.obs_size(a), central[a]) == (obs_size, is_central)]
            self.groups.append(Group(torch.tensor(agents, device=device), obs_size, is_central))
            actors.append(SetMLP(len(agents), obs_size, list(cfg.hidden), K))
            critics.append(SetMLP(len(agents), joint_size if is_central else obs_size + K, list(cfg.hidden), q_outputs))
        self.nets = nn.ModuleDict({
            "actors": actors, "critics": critics,
            "actor_targets": copy.deepcopy(actors).requires_grad_(False),  # targets start as copies
            "critic_targets": copy.deepcopy(critics).requires_grad_(False),
        }).to(device)
        self.actors, self.critics = self.nets["actors"], self.nets["critics"]
        self.actor_targets, self.critic_targets = self.nets["actor_targets"], self.nets["critic_targets"]
        self.actor_optimizer = torch.optim.Adam(self.actors.parameters(), lr=cfg.actor_lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critics.parameters(), lr=cfg.critic_lr, fused=True)

        self.replay = JointReplay(cfg.buffer_size, A, spec.obs_shape, spec.obs_storage_dtype, K, device, self.generator)
        self.next_update = cfg.update_interval

    # ------------------------------------------------------------------ helpers
    def own_obs(self, group: Group, obs: torch.Tensor) -> torch.Tensor:
        """[B, A, ...] -> the group's agents' real observation entries, [n, B, obs_size]."""
        return obs.flatten(2)[:, group.agents, : group.obs_size].transpose(0, 1)

    def joint_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, A, ...] -> x, every agent's real entries side by side, [B, X]."""
        return obs.flatten(1).index_select(1, self.joint_index)

    def q_value(self, k: int, critic: nn.Module, x: torch.Tensor, own: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q of group k's agents, [n, B] (mixture: its parameters, [n, B, 3K]). ``actions`` [n, B, A, K]: the joint
        action each agent's critic is asked about."""
        group = self.groups[k]
        n, B = actions.shape[:2]
        if group.central:
            inputs = torch.cat([x.expand(n, B, x.shape[-1]), actions.flatten(2)], dim=-1)
        else:
            inputs = torch.cat([own, actions[torch.arange(n, device=self.device), :, group.agents]], dim=-1)
        out = critic(inputs).float()
        return out if self.mixture else out.squeeze(-1)

    def q_mixture(self, out: torch.Tensor) -> Mixture:
        return acme_head(out, self.cfg.mixture_init_scale)

    def q_mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[Q] from ``q_value``'s output: the number itself, or the mixture's mean."""
        return self.q_mixture(out).mean() if self.mixture else out

    def policy(self, logits: torch.Tensor) -> torch.Tensor:
        """The differentiable action mu(o) used in the updates."""
        if self.discrete:
            return gumbel_softmax(logits, self.cfg.gumbel_temperature, self.cfg.gumbel_hard, self.generator)
        if self.gumbel_actions:  # the soft sample is the physical action
            return gumbel_softmax(logits, self.cfg.gumbel_temperature, False, self.generator)
        return self.low + (self.high - self.low) * torch.sigmoid(logits)

    def to_vector(self, actions: torch.Tensor) -> torch.Tensor:
        """Env actions -> what replay and critics read: one-hot [.., K] for discrete, the vector itself for continuous."""
        return F.one_hot(actions, self.n_actions).float() if self.discrete else actions.float()

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, env_steps: int, greedy: bool = False, context: dict | None = None) -> torch.Tensor:
        E = obs.shape[0]
        obs = obs.float()
        greedy = greedy and self.cfg.greedy_eval
        out = torch.empty((E, self.n_agents) if self.discrete else (E, self.n_agents, self.n_actions),
                          dtype=torch.int64 if self.discrete else torch.float32, device=self.device)
        for group, actor in zip(self.groups, self.actors):
            logits = actor(self.own_obs(group, obs))  # [n, E, K]
            if self.discrete:
                if not greedy:  # argmax(logits + Gumbel noise) is a sample of softmax(logits)
                    logits = logits + gumbel_noise(logits, self.generator)
                out[:, group.agents] = logits.argmax(-1).T
            elif self.gumbel_actions:
                action = torch.softmax(logits, -1) if greedy else self.policy(logits)
                out[:, group.agents] = action.transpose(0, 1)
            else:
                action = self.policy(logits)
                if not greedy:
                    noise = torch.randn(action.shape, generator=self.generator, device=self.device)
                    action = (action + self.cfg.noise_std * (self.high - self.low) * noise).clamp(self.low, self.high)
                out[:, group.agents] = action.transpose(0, 1)
        return out

    def observe(self, obs: torch.Tensor, actions: torch.Tensor, step: VecStep, context: dict | None = None) -> dict[str, torch.Tensor]:
        self.replay.add(obs=obs, action=self.to_vector(actions), reward=step.reward, next_obs=step.next_obs, terminated=step.terminated)
        return {}

    # ------------------------------------------------------------------ learning
    def update(self, env_steps: int) -> dict[str, torch.Tensor]:
        if self.replay.size < max(self.cfg.learning_starts, self.cfg.batch_size):
            self.next_update = (env_steps // self.cfg.update_interval + 1) * self.cfg.update_interval
            return {}
        metrics: dict[str, torch.Tensor] = {}
        while env_steps >= self.next_update:
            metrics = self.update_round(self.replay.sample(self.cfg.batch_size))
            self.next_update += self.cfg.update_interval
        return metrics

    def update_round(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One critic step and one actor step for every agent, then polyak-average the targets."""
        with self.autocast():
            y = self.td_targets(batch)
            critic_loss, q, q_std = self.critic_losses(batch, y)
        y_mean = y.mean(-1) if self.mixture else y  # [B, A]
        explained = 1.0 - (q - y_mean).pow(2).mean(0) / y_mean.var(0).clamp(min=1e-8)  # per agent: about 1 - Var(y - Q) / Var(y)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.sum().backward()
        for critic in self.critics:
            clip_grad_norm_per_set(critic.parameters(), self.cfg.max_grad_norm)
        self.critic_optimizer.step()

        self.critics.requires_grad_(False)  # the actor loss differentiates through the critics, not into them
        with self.autocast():
            actor_loss = self.actor_losses(batch)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.sum().backward()
        self.critics.requires_grad_(True)
        for actor in self.actors:
            clip_grad_norm_per_set(actor.parameters(), self.cfg.max_grad_norm)
        self.actor_optimizer.step()

        with torch.no_grad():
            for target, online in ((self.actor_targets, self.actors), (self.critic_targets, self.critics)):
                for t, p in zip(target.parameters(), online.parameters()):
                    t.lerp_(p, self.cfg.tau)
        self.gradient_steps += 1
        metrics = {"train/critic_loss": critic_loss.detach().mean(), "train/actor_loss": actor_loss.detach().mean(), "train/q": q.mean(),
                   "train/critic_explained_variance": explained.mean()}
        if self.mixture:
            metrics["train/q_std"], metrics["train/target_std"] = q_std.mean(), y.std(-1).mean()
        return metrics

    @torch.no_grad()
    def td_targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """y [B, A] from the target actors' actions in the next observations and the target critics (mixture: [B, A, M],
        M samples per transition and agent)."""
        next_obs = batch["next_obs"]
        B = next_obs.shape[0]
        next_actions = torch.empty(B, self.n_agents, self.n_actions, device=self.device)
        for group, actor_target in zip(self.groups, self.actor_targets):
            next_actions[:, group.agents] = self.policy(actor_target(self.own_obs(group, next_obs)).float()).transpose(0, 1)
        x = self.joint_obs(next_obs)
        y = torch.empty(B, self.n_agents, *([self.cfg.mixture_samples] if self.mixture else []), device=self.device)
        for k, (group, critic_target) in enumerate(zip(self.groups, self.critic_targets)):
            n = len(group.agents)
            q_next = self.q_value(k, critic_target, x, self.own_obs(group, next_obs), next_actions.expand(n, *next_actions.shape))
            reward, terminated = batch["reward"][:, group.agents].T, batch["terminated"][:, group.agents].T  # [n, B]
            if self.mixture:  # z ~ Q'(x', a'), M per transition
                q_next = self.q_mixture(q_next).sample(self.cfg.mixture_samples, self.generator)
                reward, terminated = reward.unsqueeze(-1), terminated.unsqueeze(-1)
            y[:, group.agents] = (reward + self.cfg.gamma * (1.0 - terminated) * q_next).transpose(0, 1)
        return y

    def critic_losses(self, batch: dict[str, torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-agent critic loss [A]: the mean squared TD error (mixture: the cross-entropy of the target samples); and,
        for logging, E[Q] and the standard deviation of Q, each [B, A] (0 for a mean critic)."""
        obs, actions = batch["obs"], batch["action"]
        x = self.joint_obs(obs)
        losses = torch.zeros(self.n_agents, device=self.device)
        q_means = torch.empty(obs.shape[0], self.n_agents, device=self.device)
        q_stds = torch.zeros(obs.shape[0], self.n_agents, device=self.device)
        for k, (group, critic) in enumerate(zip(self.groups, self.critics)):
            n = len(group.agents)
            out = self.q_value(k, critic, x, self.own_obs(group, obs), actions.expand(n, *actions.shape))
            target = y[:, group.agents].transpose(0, 1)  # [n, B] (mixture: [n, B, M])
            if self.mixture:
                mixture = self.q_mixture(out)
                loss, q = -mixture.log_prob(target).mean((1, 2)), mixture.mean()
                q_stds[:, group.agents] = mixture.std().detach().T
            else:
                loss, q = (out - target).pow(2).mean(1), out
            losses = losses.index_copy(0, group.agents, loss)
            q_means[:, group.agents] = q.detach().T
        return losses, q_means, q_stds

    def actor_losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-agent actor loss [A]: agent i's critic judges mu_i(o_i) with the other agents' replayed actions."""
        obs, actions = batch["obs"], batch["action"]
        x = self.joint_obs(obs)
        losses = torch.zeros(self.n_agents, device=self.device)
        for k, (group, actor, critic) in enumerate(zip(self.groups, self.actors, self.critics)):
            n = len(group.agents)
            own = self.own_obs(group, obs)
            logits = actor(own).float()  # [n, B, K]
            joint = actions.expand(n, *actions.shape).clone()  # [n, B, A, K]: set j's copy of the joint action ...
            joint[torch.arange(n, device=self.device), :, group.agents] = self.policy(logits)  # ... with a_j = mu_j(o_j)
            q = self.q_mean(self.q_value(k, critic, x, own, joint))
            losses = losses.index_copy(0, group.agents, -q.mean(1) + self.cfg.actor_reg * logits.pow(2).mean((1, 2)))
        return losses

    @torch.no_grad()
    def return_distribution(self, obs: torch.Tensor, context: dict | None = None) -> list[tuple[str, torch.Tensor, Mixture]] | None:
        """Every agent's Q mixture at ``obs`` [E, A, ...] for the joint action the evaluation plays there, per team:
        (its name, its agents [n], the mixture [E, n, K]); None for a mean critic."""
        if not self.mixture:
            return None
        obs = obs.float()
        E, A = obs.shape[:2]
        joint = self.to_vector(self.act(obs, 0, greedy=True))  # [E, A, K], as replay holds actions
        x = self.joint_obs(obs)
        parts = [torch.empty(E, A, self.cfg.mixture_components, device=self.device) for _ in range(3)]
        for k, (group, critic) in enumerate(zip(self.groups, self.critics)):
            n = len(group.agents)
            mixture = self.q_mixture(self.q_value(k, critic, x, self.own_obs(group, obs), joint.expand(n, *joint.shape)))
            for part, value in zip(parts, mixture):
                part[:, group.agents] = value.transpose(0, 1)
        teams = []
        for name in self.spec.team_names:
            agents = torch.tensor(self.spec.team_members(name), device=self.device)
            teams.append((name, agents, Mixture(*(part[:, agents] for part in parts))))
        return teams
