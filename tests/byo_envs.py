"""Small PettingZoo parallel environments of a user's own, for the generic adapter's tests (``env.id=byo_envs:...``)."""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium.spaces import Box, Dict, Discrete, MultiDiscrete
from pettingzoo import ParallelEnv
from pettingzoo.classic import tictactoe_v3


class Relay(ParallelEnv):
    """A scout (3 numbers seen) and two carriers (5 numbers), Discrete(3) actions, a global state; every agent is
    rewarded its action's value plus its index. With ``leave``, carrier_1 leaves after step 2 and the scout after
    step 4; the episode ends at ``max_cycles`` (truncation) for whoever is left. With ``box``, actions are Box vectors of
    two with per-agent bounds, and each agent observes its last action."""

    metadata = {"name": "relay_v0"}

    def __init__(self, leave: bool = False, max_cycles: int = 6, box: bool = False):
        self.possible_agents = ["scout_0", "carrier_0", "carrier_1"]
        self.sizes = {"scout_0": 3, "carrier_0": 5, "carrier_1": 5}
        self.leave, self.max_cycles, self.box = leave, max_cycles, box
        self.bounds = {"scout_0": (-2.0, 2.0), "carrier_0": (0.0, 1.0), "carrier_1": (0.0, 10.0)}
        self.last = {}

    def observation_space(self, agent):
        return Box(-100, 100, (self.sizes[agent],), np.float32)

    def action_space(self, agent):
        if self.box:
            lo, hi = self.bounds[agent]
            return Box(lo, hi, (2,), np.float32)
        return Discrete(3)

    def _obs(self, agent):
        base = np.full(self.sizes[agent], self.t + self.possible_agents.index(agent), np.float32)
        if self.box and agent in self.last:
            base[:2] = self.last[agent]
        return base

    def reset(self, seed=None, options=None):
        self.t, self.agents, self.last = 0, list(self.possible_agents), {}
        return {a: self._obs(a) for a in self.agents}, {a: {} for a in self.agents}

    def state(self):
        return np.array([self.t, len(self.agents)], np.float32)

    def step(self, actions):
        self.t += 1
        rewards = {}
        for a, u in actions.items():
            self.last[a] = np.asarray(u, np.float32)[:2] if self.box else u
            rewards[a] = float(np.sum(u)) + self.possible_agents.index(a)
        leaving = {"carrier_1": 2, "scout_0": 4} if self.leave else {}
        terms = {a: leaving.get(a) == self.t for a in self.agents}
        truncs = {a: self.t >= self.max_cycles and not terms[a] for a in self.agents}
        obs = {a: self._obs(a) for a in self.agents}
        infos = {a: {} for a in self.agents}
        self.agents = [a for a in self.agents if not (terms[a] or truncs[a])]
        return obs, rewards, terms, truncs, infos


def relay(**kwargs) -> Relay:
    return Relay(**kwargs)


class _Odd(Relay):
    def __init__(self, observation=None, action=None):
        super().__init__()
        self._o, self._a = observation, action

    def observation_space(self, agent):
        return self._o or super().observation_space(agent)

    def action_space(self, agent):
        return self._a or super().action_space(agent)


def dict_observations() -> ParallelEnv:
    return _Odd(observation=Dict({"position": Box(-1, 1, (2,))}))


def multidiscrete_actions() -> ParallelEnv:
    return _Odd(action=MultiDiscrete([3, 3]))


def turn_based():
    """An AEC (turn-based) environment: tic-tac-toe."""
    return tictactoe_v3.env()


def not_an_environment():
    return gymnasium.make("CartPole-v1")


NOT_CALLABLE = 3
