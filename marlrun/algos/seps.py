"""Selective parameter sharing (SePS; Christianos, Papoudakis, Rahman, Albrecht, ICML 2021): agents share a network
only with agents like them, and which agents are alike is learnt from what they experience.

1. Pre-training: for ``pretraining_steps`` env steps every agent acts and learns with one shared network, and the
   transitions (o, a, r, o') are kept (the latest ``samples`` per agent).
2. An encoder maps an agent's one-hot id to a Gaussian latent z (a VAE: one hidden layer of ``hidden`` units,
   ``z_features`` features); a decoder predicts (o', r) from (o, one-hot a, z). Both learn together by Adam on
   the kept transitions, squared reconstruction error plus ``kl_weight`` times the KL to N(0, I).
3. The agents' latent means are clustered by k-means (k-means++, 10 restarts): K is given (``clusters``), or the
   K in 2 .. N-1 (at most ``max_clusters``) with the lowest Davies-Bouldin score.
4. Each cluster gets its own network, a copy of the shared one (so no agent's output changes at the switch), and
   an agent acts and learns with its cluster's from then on, still with its one-hot id as input.

Here: the settings, the transition store, the encoder and the clustering (free of any algorithm), and ``Groups``,
which lays a team's agents out in the weight sets of marlrun's batched networks: K sets, each holding its cluster's
agents (padded to the largest cluster), gathered and scattered by index, never by a Python loop over agents.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from marlrun.errors import UserError, require

SHARING = ("none", "all", "selective")


@dataclass
class SePSConfig:
    """Selective parameter sharing's settings (used with ``algo.parameter_sharing=selective``); the paper's code's
    defaults unless noted."""

    pretraining_steps: int = 50_000  # env steps (all copies together) with one shared network before the agents are clustered (ours: the paper counts 2,000-10,000 A2C updates)
    clusters: Optional[int] = None  # K, the number of networks per team (null: the K in 2 .. N-1 with the lowest Davies-Bouldin score)
    max_clusters: int = 10  # at most this many networks per team (the paper's code: min(10, N))
    samples: int = 10_000  # transitions kept per agent for the encoder, the latest (ours: the paper keeps all of pre-training's)
    z_features: int = 10  # the latent's size
    hidden: int = 64  # the encoder's and decoder's hidden units
    kl_weight: float = 1e-4  # weight of the KL term in the encoder's loss
    lr: float = 3e-4  # the encoder's Adam learning rate
    batch_size: int = 128  # the encoder's minibatch
    epochs: int = 10  # passes over the kept transitions

    def __post_init__(self) -> None:
        for key in ("pretraining_steps", "max_clusters", "samples", "z_features", "hidden", "batch_size", "epochs"):
            require(getattr(self, key) >= 1, f"algo.seps.{key}", f"must be >= 1, got {getattr(self, key)}")
        require(self.clusters is None or self.clusters >= 1, "algo.seps.clusters", f"must be >= 1 or null, got {self.clusters}")
        require(self.kl_weight >= 0, "algo.seps.kl_weight", f"must be >= 0, got {self.kl_weight}")
        require(self.lr > 0, "algo.seps.lr", f"must be > 0, got {self.lr}")


def seps_warnings(mode: str, seps: SePSConfig) -> list[str]:
    """algo.seps.* keys set away from their defaults while sharing is not selective: they do nothing (warnings)."""
    if mode == "selective":
        return []
    default = SePSConfig()
    return [f"algo.seps.{key}={getattr(seps, key)} has no effect with algo.parameter_sharing={mode} (only with selective)"
            for key in default.__dataclass_fields__ if getattr(seps, key) != getattr(default, key)]


def check_pretraining(mode: str, seps: SePSConfig, total_steps: int) -> None:
    """A UserError when selective sharing would never cluster the agents within the run."""
    if mode == "selective" and seps.pretraining_steps >= total_steps:
        raise UserError(f"algo.seps.pretraining_steps={seps.pretraining_steps:,} >= total_steps={total_steps:,}: the agents would never be "
                        "clustered and the run would be parameter_sharing=all; lower algo.seps.pretraining_steps")


def sharing_mode(value, allowed: tuple[str, ...] = SHARING) -> str:
    """``algo.parameter_sharing`` as one of ``allowed``; true and false (the key's old values) mean all and none."""
    text = str(value).strip().lower()
    text = {"true": "all", "false": "none"}.get(text, text)
    if text not in allowed:
        hint = "" if text not in SHARING else "; selective sharing is built for ippo, mappo and super_ddqn"
        raise UserError(f"algo.parameter_sharing: '{value}' is not one of {', '.join(allowed)}{hint}")
    return text


# ---------------------------------------------------------------------------- the layout of agents in weight sets
class Groups:
    """n agents in S weight sets: set s holds the agents with ``assignment == s``, in the order of their index.

    Sets are padded to the largest (m agents); a padding slot repeats one of its set's agents and is masked out
    (``mask``). Samples are laid out batch-major within a set, as parameter sharing folds agents into the batch:
    ``split`` maps [B, n, ...] to [S, B * m, ...] and ``join`` maps back, reading only the real slots.
    """

    def __init__(self, assignment: torch.Tensor):
        cpu = torch.device("cpu")  # index arithmetic on the CPU, whatever device a surrounding `with torch.device(...)` sets
        assignment = torch.as_tensor(assignment.tolist() if assignment.device.type != "meta" else assignment, dtype=torch.long, device=cpu)
        self.assignment = assignment
        self.n = n = len(assignment)
        self.S = S = int(assignment.max()) + 1
        counts = torch.bincount(assignment, minlength=S)
        if (counts == 0).any():
            raise ValueError(f"set numbers must run 0 .. S-1 without gaps, got {assignment.tolist()}")
        self.m = m = int(counts.max())
        order = torch.argsort(assignment, stable=True)  # agents set by set, in index order within a set
        start = torch.cumsum(counts, 0) - counts
        self.slot = torch.empty(n, dtype=torch.long, device=cpu)
        self.slot[order] = torch.arange(n, device=cpu) - start[assignment[order]]  # each agent's place in its set
        slots = order[start].view(S, 1).repeat(1, m)  # padding: the set's first agent
        slots[assignment, self.slot] = torch.arange(n, device=cpu)
        self.slots = slots  # [S, m] the agent in each slot
        self.mask = torch.zeros(S, m, dtype=torch.bool, device=cpu)
        self.mask[assignment, self.slot] = True
        self.kind = "all" if S == 1 else "none" if m == 1 else "selective"

    @classmethod
    def of(cls, mode: str, n: int) -> "Groups":
        """One set for all (``all``) or one per agent (``none``)."""
        return cls(torch.zeros(n, dtype=torch.long, device="cpu") if mode == "all" else torch.arange(n, device="cpu"))

    def to(self, device: torch.device) -> "Groups":
        for key in ("assignment", "slot", "slots", "mask"):
            setattr(self, key, getattr(self, key).to(device))
        return self

    @property
    def padded(self) -> bool:
        return self.S * self.m > self.n

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n, ...] -> [S, B * m, ...]: each set's samples (every slot, padding too)."""
        if self.kind == "all":
            return x.reshape(1, -1, *x.shape[2:])
        if self.kind == "none":
            return x.transpose(0, 1)
        B = x.shape[0]
        return x[:, self.slots.flatten()].view(B, self.S, self.m, *x.shape[2:]).transpose(0, 1).reshape(self.S, B * self.m, *x.shape[2:])

    def join(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        """[S, B * m, ...] -> [B, n, ...]: each agent's samples from its own slot."""
        if self.kind == "all":
            return y.reshape(batch, self.n, *y.shape[2:])
        if self.kind == "none":
            return y.transpose(0, 1)
        per_slot = y.reshape(self.S, batch, self.m, *y.shape[2:])
        return per_slot[self.assignment, :, self.slot].transpose(0, 1)  # [n, B, ...] -> [B, n, ...]

    def split_agents_first(self, x: torch.Tensor) -> torch.Tensor:
        """[n, B, ...] -> [S, m * B, ...]: as ``split``, for agent-major inputs (a replay with an agent dimension)."""
        if self.kind == "all":
            return x.reshape(1, -1, *x.shape[2:])
        if self.kind == "none":
            return x
        return x[self.slots.flatten()].reshape(self.S, -1, *x.shape[2:])

    def join_agents_first(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        """[S, m * B, ...] -> [n, B, ...]."""
        if self.kind == "all":
            return y.reshape(self.n, batch, *y.shape[2:])
        if self.kind == "none":
            return y
        return y.reshape(self.S, self.m, batch, *y.shape[2:])[self.assignment, self.slot]

    def sample_mask(self, batch: int) -> torch.Tensor | None:
        """[S, B * m] float: 1 for a real agent's sample, 0 for padding (None when nothing is padded)."""
        if not self.padded:
            return None
        return self.mask[:, None, :].expand(-1, batch, -1).reshape(self.S, -1).float()

    def rows(self, batch: int, device: torch.device) -> torch.Tensor:
        """[B * m]: the batch row of each of a set's samples."""
        return torch.arange(batch, device=device).repeat_interleave(self.m)


# ---------------------------------------------------------------------------- switching from one network to K
@torch.no_grad()
def copy_into_sets(one: nn.Module, many: nn.Module) -> None:
    """Every weight set of ``many`` becomes a copy of ``one``'s single set (the same modules, K sets instead of 1)."""
    for (key, a), (_, b) in zip(one.state_dict().items(), many.state_dict().items(), strict=True):
        if a.dim() == 0 or a.shape == b.shape:
            b.copy_(a)
        else:
            b.copy_(a.expand_as(b))


def carry_optimizer(old: torch.optim.Optimizer, new: torch.optim.Optimizer, pairs: list[tuple[nn.Parameter, nn.Parameter]]) -> None:
    """``new``'s state for each (old, new) parameter pair is ``old``'s, spread over the new weight sets: Adam's moments
    and step go on where they were."""
    for p_old, p_new in pairs:
        state = old.state.get(p_old)
        if not state:
            continue
        new.state[p_new] = {key: (value.expand_as(p_new).clone() if torch.is_tensor(value) and value.shape == p_old.shape and value.dim() > 0
                                  else value.clone() if torch.is_tensor(value) else value) for key, value in state.items()}


# ---------------------------------------------------------------------------- what pre-training keeps
class TransitionStore:
    """The latest ``capacity`` steps of every agent: o, a (one-hot, or the action vector), r, o' and whether the
    agent acted ([capacity, A, ...])."""

    def __init__(self, n_agents: int, capacity: int, obs_size: int, action_size: int, device: torch.device):
        self.capacity, self.n_agents = capacity, n_agents
        self.obs = torch.zeros(capacity, n_agents, obs_size, device=device)
        self.next_obs = torch.zeros(capacity, n_agents, obs_size, device=device)
        self.action = torch.zeros(capacity, n_agents, action_size, device=device)
        self.reward = torch.zeros(capacity, n_agents, device=device)
        self.alive = torch.zeros(capacity, n_agents, dtype=torch.bool, device=device)
        self.position, self.size = 0, 0

    def add(self, obs, action, reward, next_obs, alive) -> None:
        """One batch of steps [N, A, ...] (observations flattened or not; actions as features [N, A, F_a]), the oldest
        overwritten when full."""
        N = obs.shape[0]
        if N > self.capacity:
            obs, action, reward, next_obs, alive = (x[-self.capacity:] for x in (obs, action, reward, next_obs, alive))
            N = self.capacity
        index = (self.position + torch.arange(N, device=self.obs.device)) % self.capacity
        self.obs[index], self.next_obs[index] = obs.flatten(2).float(), next_obs.flatten(2).float()
        self.action[index], self.reward[index], self.alive[index] = action.float(), reward.float(), alive.bool()
        self.position = (self.position + N) % self.capacity
        self.size = min(self.size + N, self.capacity)

    def transitions(self) -> tuple[torch.Tensor, ...]:
        """(agent [M], obs [M, F], action [M, F_a], reward [M], next_obs [M, F]) of every kept step an agent acted in."""
        step, agent = self.alive[: self.size].nonzero(as_tuple=True)
        return agent, self.obs[step, agent], self.action[step, agent], self.reward[step, agent], self.next_obs[step, agent]

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in ("obs", "next_obs", "action", "reward", "alive", "position", "size")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            if torch.is_tensor(value):
                getattr(self, key).copy_(value)
            else:
                setattr(self, key, value)


# ---------------------------------------------------------------------------- the encoder
class AgentEncoder(nn.Module):
    """The VAE: one-hot id -> q(z | id) = N(mu, exp(log_var)); decoder (o, a, z) -> (o', r)."""

    def __init__(self, n_agents: int, obs_size: int, action_size: int, z_features: int, hidden: int):
        super().__init__()
        self.z_features = z_features
        self.encoder = nn.Sequential(nn.Linear(n_agents, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_features))
        self.decoder = nn.Sequential(nn.Linear(z_features + obs_size + action_size, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, obs_size + 1))

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One-hot ids [B, n] -> (mu, log_var), each [B, z]."""
        return self.encoder(ids).split(self.z_features, dim=-1)

    def forward(self, ids, obs, action, noise):
        mu, log_var = self.encode(ids)
        z = mu + noise * (0.5 * log_var).exp()
        return self.decoder(torch.cat([z, obs, action], dim=-1)), mu, log_var


def fit_encoder(store: TransitionStore, cfg: SePSConfig, seed: int) -> tuple[torch.Tensor, list[float]]:
    """Train the VAE on the kept transitions; returns every agent's latent mean [A, z] and the loss per epoch
    (squared error summed over the targets plus kl_weight x KL, per transition)."""
    device = store.obs.device
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the layers' initial weights
        model = AgentEncoder(store.n_agents, store.obs.shape[-1], store.action.shape[-1], cfg.z_features, cfg.hidden).to(device)
    agent, obs, action, reward, next_obs = store.transitions()
    if len(agent) == 0:
        raise UserError("algo.parameter_sharing=selective: pre-training kept no transitions to learn the agents' latents from")
    eye = torch.eye(store.n_agents, device=device)
    target = torch.cat([next_obs, reward[:, None]], dim=-1)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    losses = []
    with torch.enable_grad():
        for _ in range(cfg.epochs):
            order = torch.randperm(len(agent), generator=generator, device=device)
            total = 0.0
            for index in order.split(cfg.batch_size):
                noise = torch.randn(len(index), cfg.z_features, generator=generator, device=device)
                prediction, mu, log_var = model(eye[agent[index]], obs[index], action[index], noise)
                reconstruction = (prediction - target[index]).square().sum()
                kl = -0.5 * (1 + log_var - mu.square() - log_var.exp()).sum()
                loss = reconstruction + cfg.kl_weight * kl
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
            losses.append(total / len(agent))
    with torch.no_grad():
        latents = model.encode(eye)[0]
    return latents.cpu(), losses


def cluster_agents(latents: np.ndarray, clusters: int | None, max_clusters: int, seed: int) -> tuple[np.ndarray, dict[int, float]]:
    """k-means (k-means++, 10 restarts) of the latents [n, z]: K = ``clusters``, or the K in 2 .. min(n-1,
    ``max_clusters``) with the lowest Davies-Bouldin score. Returns each agent's cluster, numbered by first
    appearance (agent 0 is in cluster 0), and the scores {K: DB}."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import davies_bouldin_score

    n = len(latents)
    latents = np.asarray(latents, dtype=np.float64)

    def kmeans(k: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct latents than k
            return KMeans(n_clusters=k, init="k-means++", n_init=10, random_state=seed).fit_predict(latents)

    scores: dict[int, float] = {}
    if clusters is not None:
        k = min(clusters, max_clusters, n)
    elif n <= 2:
        k = 1 if n == 1 else n
    else:
        for k in range(2, min(n - 1, max_clusters) + 1):
            labels = kmeans(k)
            scores[k] = float(davies_bouldin_score(latents, labels)) if len(set(labels)) > 1 else math.inf
        k = min(scores, key=scores.get)
    labels = kmeans(k) if k > 1 else np.zeros(n, dtype=np.int64)
    first = {}
    for label in labels:
        first.setdefault(int(label), len(first))
    return np.array([first[int(label)] for label in labels]), scores


class SelectiveSharing:
    """One team's SePS: keeps its agents' transitions during pre-training, then clusters them once.

    ``assignment`` is None until then, afterwards each agent's cluster [n]; ``record`` is what the run folder and
    the checkpoint keep of the clustering."""

    def __init__(self, cfg: SePSConfig, n_agents: int, obs_size: int, action_size: int, device: torch.device):
        self.cfg, self.n_agents = cfg, n_agents
        self.store: TransitionStore | None = TransitionStore(n_agents, cfg.samples, obs_size, action_size, device)
        self.assignment: torch.Tensor | None = None
        self.record: dict = {}

    def due(self, env_steps: int) -> bool:
        return self.assignment is None and env_steps >= self.cfg.pretraining_steps

    def keep(self, obs, action, reward, next_obs, alive) -> None:
        """Steps [N, A_team, ...] of pre-training (actions as features: one-hot, or the action vector)."""
        if self.assignment is None:
            self.store.add(obs, action, reward, next_obs, alive)

    def cluster(self, seed: int, env_steps: int, agent_names: list[str]) -> torch.Tensor:
        """Fit the encoder, cluster the latents, free the store; returns each agent's cluster [n]."""
        latents, losses = fit_encoder(self.store, self.cfg, seed)
        labels, scores = cluster_agents(latents.numpy(), self.cfg.clusters, self.cfg.max_clusters, seed)
        self.assignment = torch.as_tensor(labels, dtype=torch.long)
        self.record = {
            "env_steps": env_steps, "clusters": int(labels.max()) + 1,
            "agents": {name: int(c) for name, c in zip(agent_names, labels)},
            "davies_bouldin": {str(k): v for k, v in scores.items()},
            "encoder_loss": losses, "transitions": int(self.store.alive[: self.store.size].sum()),
            "latents": latents.tolist(),
        }
        self.store = None
        return self.assignment

    def metrics(self, team: str | None) -> dict[str, torch.Tensor]:
        """Scalars of the clustering, for the log."""
        prefix = "seps/" if team is None else f"seps/{team}/"
        out = {f"{prefix}clusters": torch.tensor(float(self.record["clusters"])), f"{prefix}encoder_loss": torch.tensor(self.record["encoder_loss"][-1])}
        out.update({f"{prefix}davies_bouldin/{k}": torch.tensor(v) for k, v in self.record["davies_bouldin"].items()})
        out.update({f"{prefix}cluster/{name}": torch.tensor(float(c)) for name, c in self.record["agents"].items()})
        return out

    def state_dict(self) -> dict:
        return {"assignment": self.assignment, "record": self.record, "store": self.store.state_dict() if self.store is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.assignment, self.record = state["assignment"], dict(state["record"])
        if state["store"] is None:
            self.store = None
        elif self.store is not None:
            self.store.load_state_dict(state["store"])


class TeamSharing(dict):
    """Team name -> its ``SelectiveSharing``, saved and restored as one part of a learner's state."""

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, part in state.items():
            self[name].load_state_dict(part)

    def records(self) -> dict[str, dict]:
        """What the run folder keeps of every team clustered so far (``seps_clusters.json``)."""
        return {name: part.record for name, part in self.items() if part.record}

    def clustered(self, state: dict) -> dict[str, torch.Tensor]:
        """Of a saved state, the assignment of each team that had been clustered."""
        return {name: part["assignment"] for name, part in state.items() if part["assignment"] is not None}
