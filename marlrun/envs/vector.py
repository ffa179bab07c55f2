"""PettingZoo parallel environments as batched tensors, stepped by SuperSuit's vector environments.

Each copy is a ``ParallelEnv`` turned into a Markov vector env (one slot per
agent) by SuperSuit; copies are concatenated in the main process
(``num_workers=0``) or spread over worker processes that write into shared
memory. Observations, rewards and flags come back as tensors [envs, agents, ...]
in one host-to-device copy per step.
"""

from __future__ import annotations

import signal
from typing import Callable

import gymnasium
import numpy as np
import torch
from pettingzoo.utils.env import ParallelEnv
from supersuit.vector import ConcatVecEnv, MarkovVectorEnv, ProcConcatVec
from supersuit.vector.multiproc_vec import decompress_info

from marlrun.envs.base import EnvSpec, VecEnv, VecStep
from marlrun.errors import UserError


class EnvWorkerDied(RuntimeError):
    """A worker process stepping environment copies exited (killed, out of memory...)."""


def copy_seed(seed: int, index: int) -> int:
    """An independent seed for environment copy ``index`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class ParallelWrapper(ParallelEnv):
    """Forwards everything to a ParallelEnv; subclasses override what they change."""

    def __init__(self, env: ParallelEnv):
        self.env = env
        self.metadata = env.metadata
        self.possible_agents = env.possible_agents
        self.render_mode = getattr(env, "render_mode", None)

    def reset(self, seed=None, options=None):
        return self.env.reset(seed=seed, options=options)

    def step(self, actions):
        return self.env.step(actions)

    @property
    def agents(self):
        return self.env.agents

    @property
    def unwrapped(self):
        return self.env.unwrapped

    def observation_space(self, agent):
        return self.env.observation_space(agent)

    def action_space(self, agent):
        return self.env.action_space(agent)

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


class _SeededCopy(ParallelWrapper):
    """Replaces the seed SuperSuit passes on reset with this copy's own.

    SuperSuit hands worker w's copy j the seed ``seed + w + j``, which repeats
    across workers; each copy here draws from its own SeedSequence instead.
    """

    def __init__(self, env: ParallelEnv, seed: int):
        super().__init__(env)
        self.seed = seed

    def reset(self, seed=None, options=None):
        return self.env.reset(seed=None if seed is None else self.seed, options=options)


class PadObservations(ParallelWrapper):
    """Zero-pads every agent's flat Box observation at the end to the largest one's size.

    SuperSuit's ``pad_observations_v0`` does the same through a parallel -> AEC -> parallel round trip that costs
    more than stepping a small MPE world; this is a thin parallel wrapper.
    """

    def __init__(self, env: ParallelEnv):
        super().__init__(env)
        spaces = [env.observation_space(a) for a in env.possible_agents]
        self.size = max(int(np.prod(space.shape)) for space in spaces)
        low = min(float(np.min(space.low)) for space in spaces)
        high = max(float(np.max(space.high)) for space in spaces)
        self._space = gymnasium.spaces.Box(low, high, (self.size,), np.float32)

    def _pad(self, observations: dict) -> dict:
        out = {}
        for agent, obs in observations.items():
            padded = np.zeros(self.size, np.float32)
            padded[: obs.size] = obs.ravel()
            out[agent] = padded
        return out

    def reset(self, seed=None, options=None):
        obs, infos = self.env.reset(seed=seed, options=options)
        return self._pad(obs), infos

    def step(self, actions):
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        return self._pad(obs), rewards, terminations, truncations, infos

    def observation_space(self, agent):
        return self._space


class _CopyFactory:
    """Picklable constructor of one seeded copy (runs inside the worker process)."""

    def __init__(self, make_env: Callable[[], ParallelEnv], seed: int):
        self.make_env, self.seed = make_env, seed

    def __call__(self) -> MarkovVectorEnv:
        # black_death: an agent gone from the episode gets zero observations and rewards until the copy resets
        return MarkovVectorEnv(_SeededCopy(self.make_env(), self.seed), black_death=True)


class _Group:
    def __init__(self, factories):
        self.factories = factories

    def __call__(self) -> ConcatVecEnv:
        return ConcatVecEnv(self.factories)


class PettingZooVecEnv(VecEnv):
    """``num_envs`` copies of a PettingZoo ParallelEnv as one batched environment (every agent's spaces made the same
    by ``make_env``'s wrappers).

    Where ``spec.agents_can_die``, an agent that terminated or was truncated is not ``alive`` in the copy's later steps
    (it is gone from the library's ``agents``) until the copy resets. Where the spec has a global state, ``make_env``'s
    copies put it in the first agent's infos (``marlrun_state`` after a step, ``marlrun_reset_state`` after a reset).
    """

    def __init__(self, make_env: Callable[[], ParallelEnv], spec: EnvSpec, num_envs: int, num_workers: int, seed: int, device: torch.device | str = "cpu"):
        self.spec, self.num_envs, self.device = spec, num_envs, torch.device(device)
        self.n_agents = spec.n_agents
        factories = [_CopyFactory(make_env, copy_seed(seed, i)) for i in range(num_envs)]
        num_workers = min(num_workers, num_envs)
        self.worker_processes = num_workers
        if num_workers == 0:
            self._vec = ConcatVecEnv(factories)
        else:
            probe = factories[0]()
            per_worker = -(-num_envs // num_workers)
            groups = [_Group(factories[i : i + per_worker]) for i in range(0, num_envs, per_worker)]
            # Workers ignore Ctrl-C and SIGTERM (sent to the whole process group by terminals and schedulers):
            # the main process decides when to stop, and closes them after its checkpoint.
            previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                self._vec = ProcConcatVec(groups, probe.observation_space, probe.action_space, num_envs * self.n_agents, probe.metadata)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            probe.close()
        self._closed = False
        self._gone = np.zeros((num_envs, self.n_agents), dtype=bool)  # agents that left their copy's episode
        self._state: np.ndarray | None = None  # [E, *state_shape], where the spec has a state (on the host, as the copies give it)

    def _reads_state(self) -> bool:
        return self.provide_state and "state" in self.spec.capabilities

    def _obs_dtype(self) -> torch.dtype:
        return torch.uint8 if self.spec.obs_storage_dtype == torch.uint8 else torch.float32

    def _read_state(self, infos: list, key: str, fallback: np.ndarray | None = None, where: np.ndarray | None = None) -> np.ndarray:
        """[E, *state_shape] from the first agent's infos of each copy (``where``: only those copies, the rest from ``fallback``)."""
        firsts = infos[:: self.n_agents]
        return np.stack([info[key] if (where is None or where[e]) and key in info else fallback[e] for e, info in enumerate(firsts)])

    def _tensor(self, array: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=dtype).reshape(self.num_envs, self.n_agents, *np.shape(array)[1:]).to(self.device)

    def reset(self) -> torch.Tensor:
        obs, infos = self._vec.reset(seed=0)  # each copy substitutes its own seed
        if self.worker_processes:  # SuperSuit's ProcConcatVec returns reset infos as its workers packed them
            infos = decompress_info(self.num_envs * self.n_agents, self._vec.idx_starts, infos)
        self._gone[:] = False
        if self._reads_state():
            self._state = self._read_state(infos, "marlrun_reset_state")
        return self._tensor(obs, self._obs_dtype()).float()

    def context(self) -> dict:
        return {"state": torch.as_tensor(self._state, device=self.device)} if self._reads_state() and self._state is not None else {}

    def step_async(self, actions: torch.Tensor) -> None:
        # discrete: [E, A] -> [E * A]; continuous: [E, A, K] -> [E * A, K]
        self._vec.step_async(actions.reshape(self.num_envs * self.n_agents, *actions.shape[2:]).cpu().numpy())

    def step_wait(self) -> VecStep:
        try:
            obs, rew, term, trunc, infos = self._vec.step_wait()
        except (EOFError, BrokenPipeError, ConnectionResetError) as exc:
            raise EnvWorkerDied(f"an environment worker process of {self.spec.name} died ({type(exc).__name__})") from None
        ended = (term | trunc).reshape(self.num_envs, self.n_agents).astype(bool)
        alive = ~self._gone
        # a copy resets when every agent still in it is done (SuperSuit's rule, with gone agents counted as done)
        done = (ended | self._gone).all(axis=1)
        left = ended & ~done[:, None]
        if left.any() and not self.spec.agents_can_die:
            e, a = map(int, np.argwhere(left)[0])
            raise UserError(f"env {self.spec.name}: agent {self.spec.agent_names[a]} left its episode before the others; "
                            "declare it with env.agents_can_leave=true (algorithms that need every agent all episode are then refused)")
        self._gone |= ended
        self._gone[done] = False
        next_obs = np.array(obs, copy=True)
        for e in np.flatnonzero(done):
            for a in range(self.n_agents):
                k = e * self.n_agents + a
                next_obs[k] = infos[k].get("terminal_observation", 0)  # an agent gone earlier: zeros
        dtype = self._obs_dtype()
        next_obs = self._tensor(next_obs, dtype).float()
        next_state = None
        if self._reads_state():
            successor = self._read_state(infos, "marlrun_state", self._state)
            self._state = self._read_state(infos, "marlrun_reset_state", successor, done) if done.any() else successor
            next_state = torch.as_tensor(successor, device=self.device)
        return VecStep(
            obs=self._tensor(obs, dtype).float(),
            next_obs=next_obs,
            reward=self._tensor(rew),
            terminated=self._tensor(term, torch.bool),
            truncated=self._tensor(trunc, torch.bool),
            alive=torch.as_tensor(alive, device=self.device),
            episode_end=torch.as_tensor(done, device=self.device),
            episode_info=self.episode_metrics(next_obs) if done.any() else {},
            next_state=next_state,
        )

    def unwrapped_copy(self, index: int = 0):
        """The unwrapped PettingZoo env (the library's own game object) of copy ``index``, as it is now; only for
        copies stepped in this process (``num_workers=0``). For drawing and tests: stepping it directly would bypass
        this adapter."""
        self.check_copy(index)
        if self.worker_processes:
            raise UserError(f"cannot draw {self.spec.name}: its copies run in worker processes; use hardware.env_workers=0")
        return self._vec.vec_envs[index].par_env.unwrapped  # SuperSuit's ConcatVecEnv of MarkovVectorEnv copies

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._vec.close()
