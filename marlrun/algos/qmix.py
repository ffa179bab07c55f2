"""QMIX and VDN: a team's Q as a mix of its agents' Qs, trained end to end on the team reward.

Rashid, Samvelyan, de Witt, Farquhar, Foerster, Whiteson. "QMIX: Monotonic Value Function Factorisation for Deep
Multi-Agent Reinforcement Learning", ICML 2018. Sunehag et al. "Value-Decomposition Networks For Cooperative
Multi-Agent Learning", AAMAS 2018. Per env step:

1. every agent acts epsilon-greedily on its own Q_a(o_a, .) (decentralised execution);
2. the joint transition (o, u, r_tot = sum of the agents' rewards, o', s, s', terminal) goes into one replay;
3. every ``update_interval`` env steps, on a minibatch of joint transitions:
       Q_tot(s, u)  = mix(Q_1(o_1, u_1), ..., Q_A(o_A, u_A); s)
       y            = r_tot + gamma * (1 - terminal) * mix'(Q'_1(o'_1, u*_1), ...; s'),  u*_a = argmax_u Q_a(o'_a, u)
       loss         = mean (y - Q_tot)^2
   with target networks (agents and mixer, ') copied every ``target_update_interval`` env steps (double Q: the
   online agents choose u*, the target agents and mixer evaluate it).

The QMIX mixer is monotonic in every Q_a: its weights are the absolute values of hypernetworks of the state. VDN's is
the sum. Agents are feed-forward: the same convolutional dueling network as SUPER-DDQN (one weight set per agent, or
one shared set with the agent's one-hot id as extra input planes); the QMIX paper's agents are recurrent (a GRU over
the episode), which this transition replay does not carry.

``standardise_rewards`` (EPyMARL's option, off by default as in the QMIX and SUPER papers) trains on
(r_tot - mean) / std of the team rewards seen so far. On pursuit every pursuer pays -0.1 a step, so the unscaled
team return is strongly negative, and QMIX's mixer can fit it by pushing every hidden unit's input far below 0,
where the ELU is flat: dQ_tot/dQ_a (``train/mixer_slope``) falls to about 0, the agents get no gradient, and their
greedy policy freezes wherever it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from marlrun.algos.seps import sharing_mode
from marlrun.algos.base import Algorithm, linear_schedule
from marlrun.envs.base import EnvSpec, VecStep
from marlrun.errors import require, require_batch_fits
from marlrun.nn import DuelingQNetwork, RunningNorm
from marlrun.replay import RingReplay

MIXERS = ("qmix", "vdn")


@dataclass
class QMIXConfig:
    """QMIX (Rashid et al., 2018) and VDN (Sunehag et al., 2018). Defaults: the QMIX reference code (pymarl) where it
    applies to feed-forward agents, SUPER-DDQN's pursuit network and replay size for comparability."""

    name: str = "qmix"
    mixer: str = "qmix"  # qmix: monotonic mixing network from hypernetworks of the state | vdn: the sum of the agents' Qs
    parameter_sharing: str = "all"  # all: one agent network with the agent's one-hot id as extra input planes (pymarl's default) | none: a weight set per agent (true/false: all/none)
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
    epsilon_end: float = 0.05  # final exploration rate
    epsilon_decay_steps: int = 50_000  # env steps from epsilon_start to epsilon_end
    standardise_rewards: bool = False  # train on (r - mean) / std of the team rewards seen so far (running averages; EPyMARL's option); off as in the QMIX and SUPER papers
    mixing_embed: int = 32  # QMIX mixing network width (pymarl)
    hypernet_embed: int = 64  # hidden units of the hypernetworks (pymarl)
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # agent network: SUPER-DDQN's convolutions
    conv_kernel: int = 2  # side of the square convolution kernels
    hidden: int = 64  # linear layer after the convolutions
    head_hidden: int = 256  # hidden units of the dueling value and advantage streams

    def __post_init__(self) -> None:
        self.parameter_sharing = sharing_mode(self.parameter_sharing, allowed=("none", "all"))
        require(self.mixer in MIXERS, "algo.mixer", f"unknown mixer '{self.mixer}'; pick one of {', '.join(MIXERS)}")
        for key in ("lr", "optim_eps", "max_grad_norm"):
            require(getattr(self, key) > 0, f"algo.{key}", f"must be > 0, got {getattr(self, key)}")
        require(0.0 <= self.optim_alpha < 1.0, "algo.optim_alpha", "must be in [0, 1)")
        require(0.0 <= self.gamma <= 1.0, "algo.gamma", "must be in [0, 1]")
        for key in ("batch_size", "buffer_size", "update_interval", "target_update_interval", "epsilon_decay_steps",
                    "mixing_embed", "hypernet_embed", "conv_kernel", "hidden", "head_hidden"):
            require(getattr(self, key) >= 1, f"algo.{key}", f"must be >= 1, got {getattr(self, key)}")
        require(self.learning_starts >= 0, "algo.learning_starts", "must be >= 0")
        require_batch_fits(self.batch_size, self.buffer_size)
        for key in ("epsilon_start", "epsilon_end"):
            require(0.0 <= getattr(self, key) <= 1.0, f"algo.{key}", "must be in [0, 1]")
        require(len(self.conv_channels) >= 1 and min(self.conv_channels) >= 1, "algo.conv_channels", "needs at least one positive width")


class QMixer(nn.Module):
    """Q_tot = w2(s) . elu(W1(s) q + b1(s)) + V(s), with W1 = |hyper_w1(s)|, w2 = |hyper_w2(s)| >= 0."""

    def __init__(self, n_agents: int, state_size: int, embed: int, hypernet_embed: int):
        super().__init__()
        self.n_agents, self.embed = n_agents, embed
        self.hyper_w1 = nn.Sequential(nn.Linear(state_size, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, n_agents * embed))
        self.hyper_b1 = nn.Linear(state_size, embed)
        self.hyper_w2 = nn.Sequential(nn.Linear(state_size, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, embed))
        self.value = nn.Sequential(nn.Linear(state_size, embed), nn.ReLU(), nn.Linear(embed, 1))

    def hidden_input(self, q: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden layer's input W1(s) q + b1(s) [B, embed], and W1(s) [B, A, embed]."""
        w1 = self.hyper_w1(state).abs().view(-1, self.n_agents, self.embed)
        return torch.bmm(q.unsqueeze(1), w1).squeeze(1) + self.hyper_b1(state), w1

    def forward(self, q: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """q [B, A], state [B, S] -> Q_tot [B]."""
        hidden = F.elu(self.hidden_input(q, state)[0])
        w2 = self.hyper_w2(state).abs()
        return (hidden * w2).sum(-1) + self.value(state).squeeze(-1)

    @torch.no_grad()
    def slope(self, q: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """dQ_tot / dQ_a [B, A] = sum_e w2_e elu'(h_e) W1_ae: how far each agent's Q moves the team's, so how much
        gradient the agents get. It falls to 0 when every hidden unit's input sits far below 0 (elu' = exp(h)): the
        mixer then fits Q_tot with V(s) alone and the agents stop learning."""
        h, w1 = self.hidden_input(q, state)
        elu_grad = torch.where(h > 0, torch.ones_like(h), h.exp())
        return torch.bmm(w1, (elu_grad * self.hyper_w2(state).abs()).unsqueeze(-1)).squeeze(-1)


class VDNMixer(nn.Module):
    """Q_tot = sum_a Q_a."""

    def forward(self, q: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return q.sum(-1)

    def slope(self, q: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(q)


class QMIX(Algorithm):
    requires = frozenset({"discrete_actions", "homogeneous", "fixed_agents", "one_team", "state"})
    suggestion = ("On pursuit use env.backend=native, which gives the global state; for several teams or other "
                  "environments use algo=super_ddqn (independent DDQN with algo.sharing=none) or algo=maddpg.")
    state_keys = ("agents", "target_agents", "mixer", "target_mixer", "optimizer", "generator", "pending_updates", "gradient_steps",
                  "last_target_update", "reward_norm", "replay")

    memory_keys = {"replay": "algo.buffer_size (joint replay)", "mixer": "algo.mixing_embed, algo.hypernet_embed (the mixer)",
                   "target_mixer": "algo.mixing_embed, algo.hypernet_embed (the mixer)", "agents": "the networks and their optimizer (algo.conv_channels, algo.hidden, algo.head_hidden)",
                   "target_agents": "the networks and their optimizer (algo.conv_channels, algo.hidden, algo.head_hidden)", "optimizer": "the optimizer's moments (every network's size)"}
    def __init__(self, cfg: QMIXConfig, spec: EnvSpec, num_envs: int, device: torch.device, seed: int, precision: str = "fp32"):
        super().__init__(cfg, spec, num_envs, device, seed, precision)
        self.n_agents = A = spec.n_agents

        # agents: one weight set each, or one shared set that sees the agent's id (A extra input planes of an image, A
        # extra numbers of a vector)
        in_shape = (*spec.obs_shape[:-1], spec.obs_shape[-1] + A) if cfg.parameter_sharing == "all" else spec.obs_shape
        net_args = (1 if cfg.parameter_sharing == "all" else A, in_shape, spec.n_actions, list(cfg.conv_channels), cfg.conv_kernel, cfg.hidden, cfg.head_hidden)
        self.agents = DuelingQNetwork(*net_args).to(device)
        self.target_agents = DuelingQNetwork(*net_args).to(device)
        make_mixer = lambda: QMixer(A, math.prod(spec.state_shape), cfg.mixing_embed, cfg.hypernet_embed) if cfg.mixer == "qmix" else VDNMixer()  # noqa: E731
        self.mixer, self.target_mixer = make_mixer().to(device), make_mixer().to(device)
        self.sync_targets()
        self.target_agents.requires_grad_(False)
        self.target_mixer.requires_grad_(False)
        self.params = [*self.agents.parameters(), *self.mixer.parameters()]
        self.optimizer = torch.optim.RMSprop(self.params, lr=cfg.lr, alpha=cfg.optim_alpha, eps=cfg.optim_eps)
        self.agent_id = torch.eye(A, device=device)  # [A, A]: agent a's id planes

        obs_dtype = spec.obs_storage_dtype
        self.replay = RingReplay(cfg.buffer_size, {
            "obs": ((A, *spec.obs_shape), obs_dtype), "action": ((A,), torch.long), "reward": ((), torch.float32),
            "next_obs": ((A, *spec.obs_shape), obs_dtype), "terminated": ((), torch.float32),
            "state": (spec.state_shape, obs_dtype), "next_state": (spec.state_shape, obs_dtype),
        }, device, self.generator, as_float=("obs", "next_obs", "state", "next_state"))
        self.reward_norm = RunningNorm().to(device) if cfg.standardise_rewards else None
        self.pending_updates = 0.0
        self.gradient_steps = 0
        self.last_target_update = 0

    # ------------------------------------------------------------------ networks
    def agent_q(self, net: DuelingQNetwork, obs: torch.Tensor) -> torch.Tensor:
        """obs [B, A, *obs_shape] (an image H, W, C or a vector F) -> every agent's Q values [B, A, n_actions] (fp32)."""
        B, A = obs.shape[:2]
        if self.cfg.parameter_sharing == "all":
            middle = obs.shape[2:-1]  # (H, W) of an image, () of a vector
            ids = self.agent_id.view(1, A, *(1,) * len(middle), A).expand(B, A, *middle, A)
            q = net(torch.cat([obs, ids], -1).reshape(1, B * A, *middle, -1))
            return q.view(B, A, -1)
        return net(obs.transpose(0, 1)).transpose(0, 1)

    def sync_targets(self) -> None:
        self.target_agents.load_state_dict(self.agents.state_dict())
        self.target_mixer.load_state_dict(self.mixer.state_dict())

    def epsilon(self, env_steps: int) -> float:
        return linear_schedule(self.cfg.epsilon_start, self.cfg.epsilon_end, self.cfg.epsilon_decay_steps, env_steps)

    def schedule(self, env_steps: int) -> dict[str, float]:
        return {"train/epsilon": self.epsilon(env_steps)}

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, env_steps: int, greedy: bool = False, context: dict | None = None) -> torch.Tensor:
        actions = self.agent_q(self.agents, obs).argmax(-1)  # [E, A]
        if not greedy:
            explore = torch.rand(actions.shape, generator=self.generator, device=self.device) < self.epsilon(env_steps)
            random_actions = torch.randint(0, self.spec.n_actions, actions.shape, generator=self.generator, device=self.device)
            actions = torch.where(explore, random_actions, actions)
        return actions

    # ------------------------------------------------------------------ collecting
    def observe(self, obs: torch.Tensor, actions: torch.Tensor, step: VecStep, context: dict | None = None) -> dict[str, torch.Tensor]:
        team_reward = step.reward.sum(-1)
        if self.reward_norm is not None:
            self.reward_norm.update(team_reward)
        self.replay.add(obs=obs, action=actions, reward=team_reward, next_obs=step.next_obs,
                        terminated=step.terminated.all(-1).float(), state=context["state"], next_state=step.next_state)
        self.pending_updates += self.num_envs / self.cfg.update_interval
        return {}

    # ------------------------------------------------------------------ learning
    def update(self, env_steps: int) -> dict[str, torch.Tensor]:
        if env_steps < self.cfg.learning_starts or self.replay.size == 0:
            self.pending_updates = 0.0
            return {}
        metrics: dict[str, torch.Tensor] = {}
        while self.pending_updates >= 1.0:
            metrics = self.gradient_step()
            self.pending_updates -= 1.0
        if env_steps - self.last_target_update >= self.cfg.target_update_interval:
            self.sync_targets()
            self.last_target_update = env_steps
        return metrics

    def td_error(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """y - Q_tot(s, u) [B] in fp32, y from the target agents and mixer at the online agents' greedy actions; and
        the agents' Q_a(o_a, u_a) [B, A] it mixed."""
        state, next_state = batch["state"].flatten(1), batch["next_state"].flatten(1)
        with self.autocast():
            q_taken = self.agent_q(self.agents, batch["obs"]).gather(-1, batch["action"].unsqueeze(-1)).squeeze(-1)  # [B, A]
            q_tot = self.mixer(q_taken.float(), state).float()
            with torch.no_grad():
                best = self.agent_q(self.agents, batch["next_obs"]).argmax(-1, keepdim=True)
                next_q = self.agent_q(self.target_agents, batch["next_obs"]).gather(-1, best).squeeze(-1)
                next_q_tot = self.target_mixer(next_q.float(), next_state).float()
        reward = batch["reward"] if self.reward_norm is None else self.reward_norm.normalize(batch["reward"])
        target = reward + self.cfg.gamma * (1.0 - batch["terminated"]) * next_q_tot
        return target - q_tot, q_taken

    def gradient_step(self) -> dict[str, torch.Tensor]:
        batch = self.replay.sample(self.cfg.batch_size)
        td, q_taken = self.td_error(batch)
        slope = self.mixer.slope(q_taken.detach().float(), batch["state"].flatten(1))  # before this step moves the mixer
        loss = td.pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.gradient_steps += 1
        return {"train/loss": loss.detach(), "train/td_error": td.detach().abs().mean(), "train/grad_norm": grad_norm,
                "train/mixer_slope": slope.mean()}
