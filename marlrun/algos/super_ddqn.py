"""SUPER-DDQN: dueling double DQN per agent, sharing selected experience between agents.

Gerstgrasser, Danino, Keren. "Selectively Sharing Experiences Improves
Multi-Agent Reinforcement Learning", NeurIPS 2023. Per training iteration:

1. collect a rollout fragment; every agent's transitions go to its own buffer;
2. every agent computes |TD error| of its new transitions with its online and
   target networks and selects some with the sharing heuristic; the selected
   transitions are inserted into every other agent's buffer (of its team);
3. every agent samples a minibatch from its own (prioritized) buffer and takes
   a gradient step. Sharing does not change the number of updates.

All agents are one batched network (a weight set per agent, one set for all
with ``parameter_sharing=all``, or one per cluster of alike agents with
``selective``: SePS, ``marlrun/algos/seps.py``) and one replay with an agent
dimension: nothing here loops over agents in Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch.nn import functional as F

from marlrun.algos.base import Algorithm, linear_schedule
from marlrun.algos.seps import (Groups, SelectiveSharing, SePSConfig, TeamSharing, carry_optimizer, check_pretraining, copy_into_sets,
                                seps_warnings, sharing_mode)
from marlrun.algos.sharing import HEURISTICS, make_heuristic, shared_fraction
from marlrun.envs.base import EnvSpec, VecStep
from marlrun.errors import UserError, require, require_batch_fits
from marlrun.hardware import compute_dtype
from marlrun.nn import DuelingQNetwork, clip_grad_norm_per_set
from marlrun.replay import AgentReplay


@dataclass
class SuperDDQNConfig:
    """SUPER on dueling double DQN with prioritized replay (Gerstgrasser et al., 2023). Defaults are the reference
    settings for pursuit."""

    name: str = "super_ddqn"
    # experience sharing
    sharing: str = "quantile"  # none (independent DDQN) | all | quantile | gaussian | stochastic
    bandwidth: float = 0.1  # beta: target fraction of each agent's transitions shared, in (0, 1]
    window: int = 1500  # k: recent |TD| values the quantile and gaussian heuristics remember
    share_team: Optional[str] = None  # share only among agents of this team (null: every team within itself)
    parameter_sharing: str = "none"  # none: a network per agent | all: one network trained on every agent's replay (a baseline) | selective: SePS, one per cluster of alike agents, found after algo.seps.pretraining_steps (true/false: all/none)
    seps: SePSConfig = field(default_factory=SePSConfig)  # selective sharing's settings (algo.seps.*)
    # DQN
    lr: float = 1.6e-4  # Adam learning rate
    adam_eps: float = 1e-8  # Adam epsilon
    gamma: float = 0.99  # discount
    batch_size: int = 32  # minibatch per agent per gradient step
    buffer_size: int = 120_000  # replay capacity per agent
    learning_starts: int = 1_000  # env steps before the first gradient step
    rollout_fragment: int = 4  # env steps per environment copy between sharing rounds
    updates_per_fragment: int = 1  # gradient steps per agent after each fragment of one environment copy
    target_update_interval: int = 1_000  # env steps between hard target-network copies
    max_grad_norm: float = 40.0  # gradient norm clip, per agent
    huber_delta: float = 1.0  # Huber loss threshold on the TD error
    # exploration: epsilon-greedy, linear decay
    epsilon_start: float = 0.1  # exploration rate at the start
    epsilon_end: float = 0.001  # exploration rate after epsilon_decay_steps
    epsilon_decay_steps: int = 100_000  # env steps from epsilon_start to epsilon_end
    # prioritized replay (Schaul et al.)
    prioritized: bool = True  # prioritized replay (false: uniform)
    per_alpha: float = 0.6  # priority exponent
    per_beta: float = 0.4  # importance-sampling exponent
    per_eps: float = 1e-6  # added to every |TD| priority
    # network: conv stack -> linear -> dueling heads
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # widths of the ReLU convolutions
    conv_kernel: int = 2  # side of the square convolution kernels
    hidden: int = 64  # linear layer after the convolutions
    head_hidden: int = 256  # hidden units in the value and advantage streams

    def __post_init__(self) -> None:
        self.parameter_sharing = sharing_mode(self.parameter_sharing)
        require(self.sharing in HEURISTICS, "algo.sharing", f"unknown heuristic '{self.sharing}'; pick one of {', '.join(HEURISTICS)}")
        require(0.0 < self.bandwidth <= 1.0, "algo.bandwidth", f"beta must be in (0, 1], got {self.bandwidth}")
        require(self.window >= 1, "algo.window", f"must be >= 1, got {self.window}")
        require(self.lr > 0, "algo.lr", "must be > 0")
        require(0.0 <= self.gamma <= 1.0, "algo.gamma", "must be in [0, 1]")
        for key in ("batch_size", "buffer_size", "rollout_fragment", "updates_per_fragment", "target_update_interval", "epsilon_decay_steps", "hidden", "head_hidden", "conv_kernel"):
            require(getattr(self, key) >= 1, f"algo.{key}", f"must be >= 1, got {getattr(self, key)}")
        require(self.learning_starts >= 0, "algo.learning_starts", "must be >= 0")
        require_batch_fits(self.batch_size, self.buffer_size)
        require(self.max_grad_norm > 0, "algo.max_grad_norm", "must be > 0")
        for key in ("epsilon_start", "epsilon_end"):
            require(0.0 <= getattr(self, key) <= 1.0, f"algo.{key}", "must be in [0, 1]")
        require(0.0 <= self.per_alpha and 0.0 <= self.per_beta <= 1.0, "algo.per_alpha/per_beta", "alpha >= 0, beta in [0, 1]")
        require(len(self.conv_channels) >= 1 and min(self.conv_channels) >= 1, "algo.conv_channels", "needs at least one positive width")


class SuperDDQN(Algorithm):
    requires = frozenset({"discrete_actions", "homogeneous"})
    suggestion = "Use algo=maddpg for continuous or mixed agents."
    state_keys = ("seps", "q", "q_target", "optimizer", "heuristic", "generator", "pending_updates", "gradient_steps", "last_target_update",
                  "fragment", "replay")

    memory_keys = {"seps": "algo.seps.samples (the transitions selective sharing keeps per agent)", "replay": "algo.buffer_size (replay per agent)", "q": "the networks and their optimizer (algo.conv_channels, algo.hidden, algo.head_hidden)", "q_target": "the networks and their optimizer (algo.conv_channels, algo.hidden, algo.head_hidden)", "optimizer": "the networks and their optimizer (algo.conv_channels, algo.hidden, algo.head_hidden)"}
    @classmethod
    def check_run(cls, cfg: SuperDDQNConfig, total_steps: int, num_envs: int) -> None:
        check_pretraining(cfg.parameter_sharing, cfg.seps, total_steps)

    @classmethod
    def ineffective(cls, cfg: SuperDDQNConfig, spec: EnvSpec) -> list[str]:
        return seps_warnings(cfg.parameter_sharing, cfg.seps)

    def __init__(self, cfg: SuperDDQNConfig, spec: EnvSpec, num_envs: int, device: torch.device, seed: int, precision: str = "fp32"):
        super().__init__(cfg, spec, num_envs, device, seed, precision)
        self.n_agents = A = spec.n_agents
        self.groups = Groups.of("none" if cfg.parameter_sharing == "none" else "all", A).to(device)  # selective: one set until clustering
        self.seps = TeamSharing({"agents": SelectiveSharing(cfg.seps, A, math.prod(spec.obs_shape), spec.n_actions, device)}
                                if cfg.parameter_sharing == "selective" else {})
        self.build_networks()

        self.replay = AgentReplay(A, cfg.buffer_size, spec.obs_shape, spec.obs_storage_dtype, device, prioritized=cfg.prioritized,
                                  alpha=cfg.per_alpha, beta=cfg.per_beta, eps=cfg.per_eps, generator=self.generator)
        self.heuristic = make_heuristic(cfg.sharing, A, cfg.bandwidth, cfg.window, device, self.generator)
        if cfg.share_team is not None and cfg.share_team not in spec.team_names:
            raise UserError(f"algo.share_team: env={spec.name} has no team '{cfg.share_team}'; its teams are {', '.join(spec.team_names)}")
        self.receives = self._share_matrix(spec, cfg.share_team).to(device)  # receives[sender, receiver]

        self.fragment: list[tuple[torch.Tensor, ...]] = []
        self.replay_ready = False  # every agent's buffer holds a transition
        self.pending_updates = 0
        self.updates_per_call = -(-cfg.updates_per_fragment * num_envs // cfg.rollout_fragment)
        self.gradient_steps = 0  # per agent
        self.last_target_update = 0

    def build_networks(self) -> None:
        """The online and target networks (one weight set per set of ``groups``) and the optimizer."""
        cfg, spec = self.cfg, self.spec
        net_args = (self.groups.S, spec.obs_shape, spec.n_actions, list(cfg.conv_channels), cfg.conv_kernel, cfg.hidden, cfg.head_hidden)
        self.q = DuelingQNetwork(*net_args).to(self.device)
        # The target network only ever computes, so it is kept in the precision it computes in (bf16 or fp32):
        # no cast of its weights in every pass, and the same numbers as casting fp32 weights each time.
        self.q_target = DuelingQNetwork(*net_args).to(self.device, compute_dtype(self.precision))
        self.q_target.load_state_dict(self.q.state_dict())
        self.q_target.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)  # one kernel for all weights

    # ------------------------------------------------------------------ selective sharing
    def use_clusters(self, assignment: torch.Tensor) -> None:
        """From one weight set to one per cluster, each a copy of the shared one (online and target; Q unchanged),
        Adam's moments carried over."""
        old_q, old_target, old_optimizer = self.q, self.q_target, self.optimizer
        self.groups = Groups(assignment).to(self.device)
        self.build_networks()
        copy_into_sets(old_q, self.q)
        copy_into_sets(old_target, self.q_target)
        carry_optimizer(old_optimizer, self.optimizer, list(zip(old_q.parameters(), self.q.parameters())))

    def load_state_dict(self, state: dict, generators: bool = True) -> None:
        for assignment in self.seps.clustered(state.get("seps", {})).values():
            self.use_clusters(assignment)  # the K weight sets, before their weights are restored
        super().load_state_dict(state, generators)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _share_matrix(spec: EnvSpec, share_team: str | None) -> torch.Tensor:
        """[A, A] bool: sender i shares with receiver j when both are on one team (the chosen one, if any), i != j."""
        team = torch.tensor([spec.team_names.index(t) for t in spec.teams])
        same = team[:, None] == team[None, :]
        same &= ~torch.eye(len(team), dtype=torch.bool)
        if share_team is not None:
            same &= (team == spec.team_names.index(share_team))[:, None]
        return same

    def _q_values(self, net: DuelingQNetwork, obs: torch.Tensor) -> torch.Tensor:
        """obs [A, B, ...] -> Q [A, B, n_actions], each agent through its weight set (agents folded into the batch of
        a set they share)."""
        return self.groups.join_agents_first(net(self.groups.split_agents_first(obs)), obs.shape[1])

    def epsilon(self, env_steps: int) -> float:
        return linear_schedule(self.cfg.epsilon_start, self.cfg.epsilon_end, self.cfg.epsilon_decay_steps, env_steps)

    def schedule(self, env_steps: int) -> dict[str, float]:
        return {"train/epsilon": self.epsilon(env_steps)}

    def td_error(self, obs, action, reward, next_obs, terminated) -> torch.Tensor:
        """Double-DQN TD error in fp32, [A, B]: r + gamma * (1 - d) * Q'(s', argmax_a Q(s', a)) - Q(s, a)."""
        with self.autocast():  # one autocast region: the online weights are cast once for both of their passes
            if torch.is_grad_enabled():  # learning: only Q(s, a) takes a gradient
                q = self._q_values(self.q, obs)
                with torch.no_grad():
                    next_online = self._q_values(self.q, next_obs)
            else:  # the sharing pass: the online network's two passes as one, over s and s' side by side
                q, next_online = self._q_values(self.q, torch.cat([obs, next_obs], 1)).chunk(2, dim=1)
            q_taken = q.gather(-1, action.unsqueeze(-1)).squeeze(-1)
            with torch.no_grad():
                next_action = next_online.argmax(-1, keepdim=True)
                next_q = self._q_values(self.q_target, next_obs).gather(-1, next_action).squeeze(-1)
        target = reward + self.cfg.gamma * (1.0 - terminated) * next_q
        return target - q_taken

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, env_steps: int, greedy: bool = False, context: dict | None = None) -> torch.Tensor:
        # fp32 whatever the precision: on a few observations casting the weights costs more than bf16 saves
        # (0.6 against 1.0 ms for 4 copies of 8 agents on a 2-core AMX CPU), and greedy actions are decided in fp32
        q = self._q_values(self.q, obs.transpose(0, 1))  # [A, E, n_actions]
        actions = q.argmax(-1).T  # [E, A]
        if not greedy:
            eps = self.epsilon(env_steps)
            explore = torch.rand(actions.shape, generator=self.generator, device=self.device) < eps
            random_actions = torch.randint(0, self.spec.n_actions, actions.shape, generator=self.generator, device=self.device)
            actions = torch.where(explore, random_actions, actions)
        return actions

    # ------------------------------------------------------------------ collecting and sharing
    def observe(self, obs: torch.Tensor, actions: torch.Tensor, step: VecStep, context: dict | None = None) -> dict[str, torch.Tensor]:
        self.fragment.append((obs, actions, step.reward, step.next_obs, step.terminated, step.alive))
        if len(self.fragment) < self.cfg.rollout_fragment:
            return {}
        # [T, E, A, ...] -> per agent [A, N = T * E, ...]
        obs, action, reward, next_obs, terminated, alive = (
            torch.stack(x).transpose(0, 2).flatten(1, 2) for x in zip(*self.fragment)
        )
        self.fragment.clear()
        self.pending_updates += self.cfg.updates_per_fragment * self.num_envs
        return self._insert_and_share(obs, action, reward, next_obs, terminated.float(), alive)

    @torch.no_grad()
    def _insert_and_share(self, obs, action, reward, next_obs, terminated, alive) -> dict[str, torch.Tensor]:
        for part in self.seps.values():  # selective sharing's pre-training keeps what the encoder learns from
            if part.assignment is None:
                part.keep(obs.transpose(0, 1), F.one_hot(action, self.spec.n_actions).transpose(0, 1), reward.T, next_obs.transpose(0, 1), alive.T)
        td_abs = self.td_error(obs, action, reward, next_obs, terminated).abs()
        share = self.heuristic.select(td_abs, alive)  # [A, N]
        # Sender a's selected transition n goes to every receiver b with receives[a, b].
        sender, index, receiver = (share[:, :, None] & self.receives[:, None, :]).nonzero(as_tuple=True)
        # Own transitions enter with the buffer's max priority (standard PER) ...
        a, n = alive.nonzero(as_tuple=True)
        self.replay.add(a, obs[a, n], action[a, n], reward[a, n], next_obs[a, n], terminated[a, n])
        # ... received ones with the mean priority of what their sender shared this round.
        if len(sender):
            sent_priority = self.replay.priority_of(td_abs)
            sent_mean = (sent_priority * share).sum(1) / share.sum(1).clamp(min=1)
            a, n = sender, index
            self.replay.add(receiver, obs[a, n], action[a, n], reward[a, n], next_obs[a, n], terminated[a, n], priority=sent_mean[a])
        self.replay_ready = bool((self.replay.size > 0).all())
        fraction = shared_fraction(share, alive)
        return {"sharing/fraction": fraction.mean(), **{f"sharing/fraction/{n}": fraction[i] for i, n in enumerate(self.spec.agent_names)}}

    # ------------------------------------------------------------------ learning
    def update(self, env_steps: int) -> dict[str, torch.Tensor]:
        if env_steps < self.cfg.learning_starts or not self.replay_ready:
            self.pending_updates = 0
            return {}
        metrics: dict[str, torch.Tensor] = {}
        # Spread the fragment's updates over the env steps of the next one, so they overlap with env stepping.
        for _ in range(min(self.pending_updates, self.updates_per_call)):
            metrics = self.gradient_step()
            self.pending_updates -= 1
        if env_steps - self.last_target_update >= self.cfg.target_update_interval:
            self.q_target.load_state_dict(self.q.state_dict())
            self.last_target_update = env_steps
        part = self.seps.get("agents")
        if part is not None and part.due(env_steps):
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator, device=self.device))
            self.use_clusters(part.cluster(seed, env_steps, list(self.spec.agent_names)))
            metrics = {**metrics, **part.metrics(None)}
            self.pending_files["seps_clusters.json"] = self.seps.records()
        return metrics

    def gradient_step(self) -> dict[str, torch.Tensor]:
        batch = self.replay.sample(self.cfg.batch_size)  # every field [A, B, ...]
        td = self.td_error(batch["obs"], batch["action"], batch["reward"], batch["next_obs"], batch["terminated"])
        per_sample = F.huber_loss(td, torch.zeros_like(td), reduction="none", delta=self.cfg.huber_delta)
        loss = (batch["weight"] * per_sample).mean(1).sum()  # each agent's loss touches only its own weights
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm_per_set(self.q.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        td_abs = td.detach().abs()
        self.replay.update_priorities(batch["index"], td_abs)
        self.gradient_steps += 1
        return {"train/loss": loss.detach() / self.n_agents, "train/td_error": td_abs.mean()}

    # ------------------------------------------------------------------ state
    def loaded(self) -> None:
        self.replay_ready = bool((self.replay.size > 0).all())  # a checkpoint without replay: the buffers refill first
