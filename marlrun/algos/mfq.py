"""Mean-field Q-learning, MF-Q (Yang et al., "Mean Field Multi-Agent Reinforcement Learning", ICML 2018),
with independent Q-learning (IL) as its baseline.

For every agent j of a learning team, at every step:

1. abar_j = the mean one-hot action of j's neighbours: their previous actions, then refined ``rounds`` times
   (every agent samples a tentative action given the current mean fields, and the mean fields are recomputed);
2. a_j ~ softmax(Q(s_j, ., abar_j) / T), a Boltzmann policy at temperature T;
3. (s_j, abar_j, a_j, r_j, s'_j, abar'_j, done_j) goes to the team's replay, abar'_j being the mean field j acts
   on at the next step;
4. y_j = r_j + gamma (1 - done_j) Q_target(s'_j, argmax_a Q(s'_j, a, abar'_j), abar'_j)      (double DQN)
   minimise Huber(Q(s_j, a_j, abar_j) - y_j), then move the target network towards the online one (polyak).

IL is the same network and update without abar. A team's agents share one network and are evaluated in one
batched forward pass; teams can instead be played by a uniformly random policy or by a frozen network loaded
from another run's checkpoint. Dead agents (``alive`` false) store no transitions and count in no mean field.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from marlrun.algos.base import Algorithm, linear_schedule, set_by_user
from marlrun.checkpoint import checkpoint_paths, load_checkpoint
from marlrun.envs.base import EnvSpec, VecStep
from marlrun.errors import UserError, require, require_batch_fits
from marlrun.nn import MeanFieldQNetwork
from marlrun.replay import RingReplay

LEARNERS = ("mfq", "iql")
CONTROLLERS = (*LEARNERS, "random")
ACT_CHUNK = 32_768  # agents per forward pass when acting


@dataclass
class MFQConfig:
    """Mean-field Q-learning (Yang et al., 2018) and its IL baseline. Defaults are the MF-Q paper's battle settings."""

    name: str = "mfq"
    controller: str = "mfq"  # the env's first team (battle: red): mfq | iql (the IL baseline: no mean action)
    opponent: str = "mfq"  # its second team (battle: blue): mfq | iql (both learn) | random | frozen:RUN_DIR[@TEAM] (another run's newest checkpoint, not learning; @TEAM picks which of its teams)
    rounds: int = 0  # mean-field refinement before acting: every agent samples a tentative action given the current mean fields, then they are recomputed, this many times (0: the neighbours' previous actions)
    temperature: float = 1.0  # Boltzmann temperature tau of softmax(Q / tau) (env=ising: the lattice's physical temperature is T = 2 tau, see algo=mcmc)
    temperature_end: Optional[float] = None  # anneal linearly to this over temperature_decay_steps (null: constant)
    temperature_decay_steps: int = 0  # env steps of the anneal
    greedy_eval: bool = True  # evaluation: argmax (true) or the Boltzmann policy at the current temperature (false, as experiment=mfq_ising does)
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
    conv_kernel: int = 3  # image observations: side of the square convolution kernels
    obs_hidden: int = 256  # image observations: dense layer after the convolutions
    mean_action_hidden: int = 64  # embedding of the mean action (0: feed it as it is)
    hidden: list[int] = field(default_factory=lambda: [128, 64])  # ReLU layers after observation and mean action meet

    def __post_init__(self) -> None:
        require(self.controller in LEARNERS, "algo.controller", f"unknown controller '{self.controller}'; pick one of {', '.join(LEARNERS)}")
        require(self.opponent in CONTROLLERS or (self.opponent.startswith("frozen:") and len(self.opponent) > 7), "algo.opponent",
                f"unknown controller '{self.opponent}'; pick one of {', '.join(CONTROLLERS)}, or frozen:RUN_DIR[@TEAM]")
        require(self.rounds >= 0, "algo.rounds", f"must be >= 0, got {self.rounds}")
        require(self.temperature > 0, "algo.temperature", f"must be > 0, got {self.temperature}")
        require(self.temperature_end is None or self.temperature_end > 0, "algo.temperature_end", f"must be > 0, got {self.temperature_end}")
        require(self.temperature_decay_steps >= 0, "algo.temperature_decay_steps", "must be >= 0")
        for key in ("lr", "max_grad_norm", "huber_delta"):
            require(getattr(self, key) > 0, f"algo.{key}", f"must be > 0, got {getattr(self, key)}")
        require(0.0 <= self.gamma <= 1.0, "algo.gamma", "must be in [0, 1]")
        require(0.0 < self.tau <= 1.0, "algo.tau", "must be in (0, 1]")
        for key in ("batch_size", "buffer_size", "update_interval", "conv_kernel", "obs_hidden"):
            require(getattr(self, key) >= 1, f"algo.{key}", f"must be >= 1, got {getattr(self, key)}")
        require(self.learning_starts >= 0, "algo.learning_starts", "must be >= 0")
        require_batch_fits(self.batch_size, self.buffer_size)
        require(self.mean_action_hidden >= 0, "algo.mean_action_hidden", "must be >= 0")
        require(min(self.conv_channels, default=1) >= 1 and min(self.hidden, default=1) >= 1, "algo.conv_channels/hidden", "widths must be positive")


@dataclass
class Team:
    name: str
    agents: slice | torch.Tensor  # the team's columns of [E, A] tensors
    controller: str  # mfq | iql | random | frozen:PATH
    net: nn.Module | None = None
    target: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    replay: RingReplay | None = None

    @property
    def learns(self) -> bool:
        return self.controller in LEARNERS

    def state_dict(self, include_replay: bool = True) -> dict:
        entry = {"controller": self.controller}
        if self.net is not None:
            entry["net"] = self.net.state_dict()
        if self.learns:
            entry.update(target=self.target.state_dict(), optimizer=self.optimizer.state_dict())
            if include_replay:
                entry["replay"] = self.replay.state_dict()
        return entry

    def load_state_dict(self, saved: dict) -> None:
        if saved["controller"] != self.controller:
            raise ValueError(f"team {self.name} was played by {saved['controller']}, not {self.controller}")
        if self.net is not None:
            self.net.load_state_dict(saved["net"])
        if self.learns:
            self.target.load_state_dict(saved["target"])
            self.optimizer.load_state_dict(saved["optimizer"])
            if "replay" in saved:  # else the buffer refills before learning goes on
                self.replay.load_state_dict(saved["replay"])


class Teams(list):
    """The teams, saved by name."""

    def state_dict(self, include_replay: bool = True) -> dict:
        return {team.name: team.state_dict(include_replay) for team in self}

    def load_state_dict(self, state: dict) -> None:
        for team in self:
            team.load_state_dict(state[team.name])


def team_columns(members: list[int], device: torch.device) -> slice | torch.Tensor:
    """A slice when the members are consecutive (no copy when indexing), else an index tensor."""
    if members == list(range(members[0], members[-1] + 1)):
        return slice(members[0], members[-1] + 1)
    return torch.tensor(members, device=device)


def boltzmann(q: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """A sample of softmax(q / temperature) along the last dim (Gumbel-max: argmax of q / T plus Gumbel noise).

    With two actions the difference of two Gumbel variables is logistic: a = 1 when (q1 - q0) / T + log(u / (1 - u)) > 0,
    which has probability sigmoid((q1 - q0) / T), the softmax's, in one noise draw instead of two."""
    if q.shape[-1] == 2:
        u = torch.rand(q.shape[:-1], generator=generator, device=q.device).clamp_(1e-7, 1 - 1e-7)
        return ((q[..., 1] - q[..., 0]) / temperature + torch.log(u) - torch.log1p(-u) > 0).long()
    u = torch.rand(q.shape, generator=generator, device=q.device).clamp_(min=1e-20)
    return (q / temperature - torch.log(-torch.log(u))).argmax(-1)


def greedy(q: torch.Tensor) -> torch.Tensor:
    """argmax over the last dim (with two actions, one comparison: argmax's reduction is slow on a million short rows)."""
    return (q[..., 1] > q[..., 0]).long() if q.shape[-1] == 2 else q.argmax(-1)


class MFQ(Algorithm):
    requires = frozenset({"discrete_actions", "neighbours"})
    suggestion = "MF-Q runs on env=ising and env=battle; use algo=super_ddqn or algo=maddpg elsewhere."
    state_keys = ("teams", "generator", "next_update", "gradient_steps")

    @classmethod
    def ineffective(cls, cfg: MFQConfig, spec: EnvSpec) -> list[str]:
        unused = []
        if len(spec.obs_shape) != 3:
            unused += [f"algo.{key}={getattr(cfg, key)} has no effect: env={spec.name}'s observations are vectors, not images"
                       for key in ("conv_channels", "conv_kernel", "obs_hidden") if set_by_user(cfg, key)]
        if cfg.temperature_end is not None and cfg.temperature_decay_steps <= 0 and set_by_user(cfg, "temperature"):
            unused.append(f"algo.temperature={cfg.temperature} has no effect: with algo.temperature_decay_steps=0 the policy runs at "
                          f"algo.temperature_end={cfg.temperature_end} from the start; give the anneal its steps")
        if len(spec.team_names) < 2 and set_by_user(cfg, "opponent"):
            unused.append(f"algo.opponent={cfg.opponent} has no effect: env={spec.name} has one team, played by algo.controller")
        return unused

    memory_keys = {"teams": "algo.buffer_size, algo.obs_hidden, algo.hidden (each learning team's replay and networks)"}
    def __init__(self, cfg: MFQConfig, spec: EnvSpec, num_envs: int, device: torch.device, seed: int, precision: str = "fp32"):
        super().__init__(cfg, spec, num_envs, device, seed, precision)
        self.n_actions = spec.n_actions
        self.net_args = dict(obs_shape=spec.obs_shape, n_actions=spec.n_actions, conv_channels=list(cfg.conv_channels),
                             conv_kernel=cfg.conv_kernel, obs_hidden=cfg.obs_hidden, mean_action_hidden=cfg.mean_action_hidden, hidden=list(cfg.hidden))

        self.teams = Teams()
        for i, team_name in enumerate(spec.team_names):
            team = Team(team_name, team_columns(spec.team_members(team_name), device), cfg.controller if i == 0 else cfg.opponent)
            if team.learns:
                team.net = MeanFieldQNetwork(use_mean_action=team.controller == "mfq", **self.net_args).to(device)
                team.target = MeanFieldQNetwork(use_mean_action=team.controller == "mfq", **self.net_args).to(device)
                team.target.load_state_dict(team.net.state_dict())
                team.target.requires_grad_(False)
                team.optimizer = torch.optim.Adam(team.net.parameters(), lr=cfg.lr, fused=True)  # one kernel for all weights
                K, obs = spec.n_actions, spec.obs_shape
                team.replay = RingReplay(cfg.buffer_size, {
                    "obs": (obs, spec.obs_storage_dtype), "mean_action": ((K,), torch.float32), "action": ((), torch.long),
                    "reward": ((), torch.float32), "next_obs": (obs, spec.obs_storage_dtype),
                    "next_mean_action": ((K,), torch.float32), "terminated": ((), torch.float32),
                }, device, self.generator, as_float=("obs", "next_obs"))
            elif team.controller.startswith("frozen:"):
                team.net = self.load_frozen(team.name, team.controller.removeprefix("frozen:"))
            self.teams.append(team)
        self.learning = [team for team in self.teams if team.learns]

        self.acted: deque[torch.Tensor] = deque()  # mean fields of training-time acts not yet observed
        self.pending: tuple | None = None  # the last step's transitions, waiting for the next step's mean fields
        self.next_update = cfg.update_interval

    # ------------------------------------------------------------------ acting
    def temperature(self, env_steps: int) -> float:
        start, end = self.cfg.temperature, self.cfg.temperature if self.cfg.temperature_end is None else self.cfg.temperature_end
        if self.cfg.temperature_decay_steps <= 0:
            return end
        return linear_schedule(start, end, self.cfg.temperature_decay_steps, env_steps)

    def choose(self, obs: torch.Tensor, mean_action: torch.Tensor, temperature: float, argmax: bool) -> torch.Tensor:
        """Every team's actions [E, A] given mean fields [E, A, K]: one batched pass per team."""
        E, A = obs.shape[:2]
        actions = torch.empty(E, A, dtype=torch.long, device=self.device)
        for team in self.teams:
            n = actions[:, team.agents].shape[1]
            if team.net is None:  # random
                actions[:, team.agents] = torch.randint(0, self.n_actions, (E, n), generator=self.generator, device=self.device)
                continue
            team_obs, team_mean = obs[:, team.agents].flatten(0, 1), mean_action[:, team.agents].flatten(0, 1)
            chosen = torch.empty(E * n, dtype=torch.long, device=self.device)
            for start in range(0, E * n, ACT_CHUNK):  # chunks keep a million lattice sites' activations in cache
                rows = slice(start, start + ACT_CHUNK)
                with self.autocast():
                    q = team.net(team_obs[rows], team_mean[rows])
                chosen[rows] = greedy(q) if argmax else boltzmann(q, temperature, self.generator)
            actions[:, team.agents] = chosen.view(E, n)
        return actions

    @torch.no_grad()
    def act(self, obs: torch.Tensor, env_steps: int, greedy: bool = False, context: dict | None = None) -> torch.Tensor:
        neighbours, previous = context["neighbours"], context["prev_actions"]
        alive = context.get("alive")
        temperature = self.temperature(env_steps)
        argmax = greedy and self.cfg.greedy_eval
        mean_action = neighbours.mean(previous, self.n_actions)
        for _ in range(self.cfg.rounds):
            tentative = self.choose(obs, mean_action, temperature, argmax)
            if alive is not None:
                tentative = tentative.masked_fill(~alive, -1)
            mean_action = neighbours.mean(tentative, self.n_actions)
        if not greedy:  # training: remember the mean fields these actions were chosen with
            self.acted.append(mean_action)
        return self.choose(obs, mean_action, temperature, argmax)

    # ------------------------------------------------------------------ replay
    def observe(self, obs: torch.Tensor, actions: torch.Tensor, step: VecStep, context: dict | None = None) -> dict[str, torch.Tensor]:
        mean_action = self.acted.popleft()
        if self.pending is not None:
            self.store(*self.pending, next_mean_action=mean_action)
        self.pending = (obs, mean_action, actions, step)
        return {}

    def store(self, obs, mean_action, actions, step: VecStep, next_mean_action: torch.Tensor) -> None:
        """Put one step's transitions of every learning team's living agents into the team's replay."""
        ended = step.episode_end[:, None, None]  # the next mean field belongs to a new episode: keep the last one
        next_mean_action = torch.where(ended, mean_action, next_mean_action)
        for team in self.learning:
            acted = step.alive[:, team.agents]
            team.replay.add(
                obs=obs[:, team.agents][acted], mean_action=mean_action[:, team.agents][acted],
                action=actions[:, team.agents][acted], reward=step.reward[:, team.agents][acted],
                next_obs=step.next_obs[:, team.agents][acted], next_mean_action=next_mean_action[:, team.agents][acted],
                terminated=step.terminated[:, team.agents][acted],
            )

    # ------------------------------------------------------------------ learning
    def update(self, env_steps: int) -> dict[str, torch.Tensor]:
        if env_steps < self.cfg.learning_starts or min(team.replay.size for team in self.learning) < self.cfg.batch_size:
            self.next_update = (env_steps // self.cfg.update_interval + 1) * self.cfg.update_interval
            return {}
        metrics: dict[str, torch.Tensor] = {}
        while env_steps >= self.next_update:
            for team in self.learning:
                metrics.update({f"train/{team.name}/{k}": v for k, v in self.learn(team, team.replay.sample(self.cfg.batch_size)).items()})
            self.gradient_steps += 1
            self.next_update += self.cfg.update_interval
        return metrics

    def td_target(self, team: Team, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """y = r + gamma (1 - terminated) Q_target(s', argmax_a Q(s', a, abar'), abar')."""
        with torch.no_grad(), self.autocast():
            best = team.net(batch["next_obs"], batch["next_mean_action"]).argmax(-1, keepdim=True)
            next_q = team.target(batch["next_obs"], batch["next_mean_action"]).gather(-1, best).squeeze(-1)
            return batch["reward"] + self.cfg.gamma * (1.0 - batch["terminated"]) * next_q

    def learn(self, team: Team, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        y = self.td_target(team, batch)
        with self.autocast():
            q = team.net(batch["obs"], batch["mean_action"]).gather(-1, batch["action"][:, None]).squeeze(-1)
        loss = F.huber_loss(q, y, delta=self.cfg.huber_delta)
        team.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(team.net.parameters(), self.cfg.max_grad_norm)
        team.optimizer.step()
        with torch.no_grad():
            for target, online in zip(team.target.parameters(), team.net.parameters()):
                target.lerp_(online, self.cfg.tau)
        return {"loss": loss.detach(), "q": q.detach().mean(), "grad_norm": grad_norm.detach()}

    def schedule(self, env_steps: int) -> dict[str, float]:
        return {"train/temperature": self.temperature(env_steps)}

    # ------------------------------------------------------------------ frozen opponents and checkpoints
    def load_frozen(self, team_name: str, source: str) -> nn.Module:
        """A non-learning network for ``team_name`` from another run: ``RUN_DIR`` (its newest checkpoint) or a
        checkpoint file, with ``@TEAM`` to pick which of its teams (default: the same name, else its only learner)."""
        path, _, source_team = source.partition("@")
        where = Path(path)
        if where.is_dir():
            paths = checkpoint_paths(where)
            if not paths:
                raise UserError(f"algo.opponent=frozen:{source}: {where} has no checkpoint")
            where = paths[-1]
        try:
            state = load_checkpoint(where)
        except UserError as exc:
            raise UserError(f"algo.opponent=frozen:{source}: {exc}") from None
        saved = state.get("algo", {}).get("teams", {}) if isinstance(state, dict) else {}
        algo_name = ((state.get("config") or {}).get("algo") or {}).get("name", "?") if isinstance(state, dict) else "?"
        if not saved:
            raise UserError(f"algo.opponent=frozen:{source}: that is a run of algo={algo_name}, not of MF-Q; a frozen opponent is a "
                            "learning team (mfq or iql) of another algo=mfq run")
        learners = [name for name, team in saved.items() if team.get("controller") in LEARNERS]
        if not learners:
            played = ", ".join(f"{name} by {team.get('controller')}" for name, team in saved.items())
            raise UserError(f"algo.opponent=frozen:{source}: none of that run's teams learned ({played}); "
                            "freeze a run whose controller or opponent was mfq or iql")
        if not source_team:
            source_team = team_name if team_name in learners else (learners[0] if len(learners) == 1 else "")
        if source_team not in learners:
            raise UserError(f"algo.opponent=frozen:{source}: pick one of its learning teams with @TEAM ({', '.join(learners) or 'none'})")
        net = MeanFieldQNetwork(use_mean_action=saved[source_team]["controller"] == "mfq", **self.net_args).to(self.device)
        try:
            net.load_state_dict(saved[source_team]["net"])
        except RuntimeError:
            raise UserError(f"algo.opponent=frozen:{source}: its network does not fit this config; "
                            "use the same algo network keys (conv_channels, hidden...) as that run") from None
        return net.requires_grad_(False)
