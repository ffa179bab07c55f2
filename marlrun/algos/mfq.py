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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from marlrun.algos.base import Algorithm
from marlrun.hardware import autocast
from marlrun.checkpoint import checkpoint_paths, load_checkpoint
from marlrun.envs.base import EnvSpec, VecStep
from marlrun.errors import UserError
from marlrun.nn import MeanFieldQNetwork
from marlrun.replay import RingReplay

LEARNERS = ("mfq", "iql")
ACT_CHUNK = 32_768  # agents per forward pass when acting


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
    name = "mfq"
    requires = frozenset({"discrete_actions", "neighbours"})
    suggestion = "MF-Q runs on env=ising and env=battle; use algo=super_ddqn or algo=maddpg elsewhere."

    def __init__(self, spec: EnvSpec, num_envs: int, device: torch.device, seed: int, *, precision: str = "fp32", name: str = "mfq",
                 controller: str, opponent: str, rounds: int, temperature: float, temperature_end: float | None,
                 temperature_decay_steps: int, greedy_eval: bool, lr: float, gamma: float, tau: float, batch_size: int,
                 buffer_size: int, learning_starts: int, update_interval: int, max_grad_norm: float, huber_delta: float,
                 conv_channels: list[int], conv_kernel: int, obs_hidden: int, mean_action_hidden: int, hidden: list[int]):
        self.spec, self.device = spec, device
        self.autocast = lambda: autocast(device, precision)  # the networks' matmuls and convolutions; outputs are fp32
        self.n_actions = spec.n_actions
        self.rounds, self.greedy_eval = rounds, greedy_eval
        self.temperature_start = temperature
        self.temperature_end = temperature if temperature_end is None else temperature_end
        self.temperature_decay_steps = temperature_decay_steps
        self.gamma, self.tau, self.batch_size, self.learning_starts = gamma, tau, batch_size, learning_starts
        self.update_interval, self.max_grad_norm, self.huber_delta = update_interval, max_grad_norm, huber_delta
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.net_args = dict(obs_shape=spec.obs_shape, n_actions=spec.n_actions, conv_channels=list(conv_channels),
                             conv_kernel=conv_kernel, obs_hidden=obs_hidden, mean_action_hidden=mean_action_hidden, hidden=list(hidden))

        self.teams: list[Team] = []
        for i, team_name in enumerate(spec.team_names):
            team = Team(team_name, team_columns(spec.team_members(team_name), device), controller if i == 0 else opponent)
            if team.learns:
                team.net = MeanFieldQNetwork(use_mean_action=team.controller == "mfq", **self.net_args).to(device)
                team.target = MeanFieldQNetwork(use_mean_action=team.controller == "mfq", **self.net_args).to(device)
                team.target.load_state_dict(team.net.state_dict())
                team.target.requires_grad_(False)
                team.optimizer = torch.optim.Adam(team.net.parameters(), lr=lr, fused=True)  # one kernel for all weights
                K, obs = spec.n_actions, spec.obs_shape
                team.replay = RingReplay(buffer_size, {
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
        self.next_update = update_interval

    # ------------------------------------------------------------------ acting
    def temperature(self, env_steps: int) -> float:
        if self.temperature_decay_steps <= 0:
            return self.temperature_end
        frac = min(1.0, env_steps / self.temperature_decay_steps)
        return self.temperature_start + frac * (self.temperature_end - self.temperature_start)

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
        argmax = greedy and self.greedy_eval
        mean_action = neighbours.mean(previous, self.n_actions)
        for _ in range(self.rounds):
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
        if env_steps < self.learning_starts or min(team.replay.size for team in self.learning) < self.batch_size:
            self.next_update = (env_steps // self.update_interval + 1) * self.update_interval
            return {}
        metrics: dict[str, torch.Tensor] = {}
        while env_steps >= self.next_update:
            for team in self.learning:
                metrics.update({f"{team.name}/{k}": v for k, v in self.learn(team, team.replay.sample(self.batch_size)).items()})
            self.gradient_steps += 1
            self.next_update += self.update_interval
        return metrics

    def td_target(self, team: Team, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """y = r + gamma (1 - terminated) Q_target(s', argmax_a Q(s', a, abar'), abar')."""
        with torch.no_grad(), self.autocast():
            best = team.net(batch["next_obs"], batch["next_mean_action"]).argmax(-1, keepdim=True)
            next_q = team.target(batch["next_obs"], batch["next_mean_action"]).gather(-1, best).squeeze(-1)
            return batch["reward"] + self.gamma * (1.0 - batch["terminated"]) * next_q

    def learn(self, team: Team, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        y = self.td_target(team, batch)
        with self.autocast():
            q = team.net(batch["obs"], batch["mean_action"]).gather(-1, batch["action"][:, None]).squeeze(-1)
        loss = F.huber_loss(q, y, delta=self.huber_delta)
        team.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(team.net.parameters(), self.max_grad_norm)
        team.optimizer.step()
        with torch.no_grad():
            for target, online in zip(team.target.parameters(), team.net.parameters()):
                target.lerp_(online, self.tau)
        return {"loss": loss.detach(), "q": q.detach().mean(), "grad_norm": grad_norm.detach()}

    def schedule(self, env_steps: int) -> dict[str, float]:
        return {"temperature": self.temperature(env_steps)}

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
        learners = [name for name, team in saved.items() if team.get("controller") in LEARNERS]
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

    def state_dict(self, include_replay: bool = True) -> dict:
        teams = {}
        for team in self.teams:
            entry = {"controller": team.controller}
            if team.net is not None:
                entry["net"] = team.net.state_dict()
            if team.learns:
                entry.update(target=team.target.state_dict(), optimizer=team.optimizer.state_dict())
                if include_replay:
                    entry["replay"] = team.replay.state_dict()
            teams[team.name] = entry
        return {"teams": teams, "generator": self.generator.get_state(), "next_update": self.next_update,
                "gradient_steps": self.gradient_steps}

    def load_state_dict(self, state: dict) -> None:
        for team in self.teams:
            saved = state["teams"][team.name]
            if saved["controller"] != team.controller:
                raise ValueError(f"team {team.name} was played by {saved['controller']}, not {team.controller}")
            if team.net is not None:
                team.net.load_state_dict(saved["net"])
            if team.learns:
                team.target.load_state_dict(saved["target"])
                team.optimizer.load_state_dict(saved["optimizer"])
                if "replay" in saved:
                    team.replay.load_state_dict(saved["replay"])
        self.generator.set_state(state["generator"])
        self.next_update, self.gradient_steps = state["next_update"], state["gradient_steps"]
