"""Bring your own environment: the generic PettingZoo adapter and the VMAS adapter against the libraries themselves,
the specs they derive, their one-line refusals, and every algorithm on them (a few hundred steps, or one line saying
why not)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from marlrun.algos.base import unmet_needs
from marlrun.envs.pettingzoo import PettingZooConfig, constructor, make_pettingzoo, pettingzoo_spec
from marlrun.envs.vector import copy_seed
from marlrun.envs.vmas import VmasConfig, make_vmas, vmas_seed, vmas_spec
from marlrun.errors import UserError
from marlrun.metrics import read_metrics
from marlrun.registry import ALGORITHMS
from marlrun.runner import train

warnings.filterwarnings("ignore", category=DeprecationWarning)


# ---------------------------------------------------------------------------- PettingZoo: lockstep with the library
def expected_obs(obs, spec) -> torch.Tensor:
    """What the adapter should hand on for one agent's raw observation: images as they are, vectors flattened and
    zero-padded, in float32."""
    if len(spec.obs_shape) == 3:
        return torch.as_tensor(np.asarray(obs)).float()
    flat = np.asarray(obs, np.float32).ravel()
    return torch.as_tensor(np.concatenate([flat, np.zeros(spec.obs_shape[0] - flat.size, np.float32)]))


def lockstep(env_id: str, kwargs: dict, steps: int, seed: int = 5, **cfg) -> int:
    """Step the adapter (one copy, in this process) and the library's own environment with the same seed and the same
    random actions; every observation, reward and flag must be identical. Returns the episodes that ended."""
    env = make_pettingzoo(PettingZooConfig(id=env_id, kwargs=kwargs, **cfg), 1, 0, seed)
    spec, agents = env.spec, env.spec.agent_names
    raw = constructor(env_id)(**kwargs)
    raw_obs, _ = raw.reset(seed=copy_seed(seed, 0))
    obs = env.reset()
    for i, a in enumerate(agents):
        assert torch.equal(obs[0, i], expected_obs(raw_obs[a], spec))
    rng = np.random.default_rng(0)
    lo, hi = spec.action_bounds
    episodes = 0
    for _ in range(steps):
        if spec.discrete_actions:
            acts = rng.integers(spec.n_actions, size=len(agents))
            tensor = torch.as_tensor(acts)[None]
        else:
            acts = rng.uniform(lo, hi, size=(len(agents), spec.n_actions)).astype(np.float32)
            tensor = torch.as_tensor(acts)[None]
        live = list(raw.agents)
        step = env.step(tensor)
        r_obs, r_rew, r_term, r_trunc, _ = raw.step({a: acts[i] for i, a in enumerate(agents) if a in live})
        for i, a in enumerate(agents):
            assert bool(step.alive[0, i]) == (a in live)
            if a in live:
                assert torch.equal(step.next_obs[0, i], expected_obs(r_obs[a], spec)), (a, episodes)
                assert step.reward[0, i].item() == np.float32(r_rew[a])
                assert (bool(step.terminated[0, i]), bool(step.truncated[0, i])) == (bool(r_term[a]), bool(r_trunc[a]))
            else:
                assert step.reward[0, i].item() == 0.0 and not step.terminated[0, i]
        ended = not raw.agents
        assert bool(step.episode_end[0]) == ended
        if ended:
            episodes += 1
            raw_obs, _ = raw.reset()
            for i, a in enumerate(agents):
                assert torch.equal(step.obs[0, i], expected_obs(raw_obs[a], spec))
        else:
            assert torch.equal(step.obs, step.next_obs)
    env.close()
    return episodes


def test_simple_spread_discrete_vectors_step_as_mpe2_does():
    assert lockstep("mpe2.simple_spread_v3", {"N": 3, "max_cycles": 10}, steps=35) == 3


def test_simple_adversary_of_unequal_observations_steps_as_mpe2_does_padded():
    assert lockstep("mpe2.simple_adversary_v3", {"N": 2, "max_cycles": 8}, steps=20) == 2


def test_multiwalker_continuous_vectors_step_as_the_library_does():
    assert lockstep("pettingzoo.sisl.multiwalker_v9", {"n_walkers": 3, "max_cycles": 15}, steps=40) >= 2


def test_cooperative_pong_images_step_as_the_library_does():
    assert lockstep("pettingzoo.butterfly.cooperative_pong_v6", {"max_cycles": 12}, steps=26) >= 2


def test_knights_archers_zombies_flattened_observations_step_as_the_library_does():
    assert lockstep("pettingzoo.butterfly.knights_archers_zombies_v11", {"max_cycles": 12}, steps=26, agents_can_leave=True) >= 2


def test_agents_that_leave_are_not_alive_until_the_copy_resets():
    episodes = lockstep("byo_envs:relay", {"leave": True, "max_cycles": 6}, steps=14, agents_can_leave=True)
    assert episodes == 2
    env = make_pettingzoo(PettingZooConfig(id="byo_envs:relay", kwargs={"leave": True, "max_cycles": 6}, agents_can_leave=True), 2, 0, 0)
    env.reset()
    alive = [env.step(torch.zeros(2, 3, dtype=torch.long)).alive[0].tolist() for _ in range(7)]
    assert alive == [[True] * 3, [True] * 3, [True, True, False], [True, True, False], [False, True, False], [False, True, False], [True] * 3]


def test_an_agent_that_leaves_undeclared_is_one_line_naming_the_key():
    env = make_pettingzoo(PettingZooConfig(id="byo_envs:relay", kwargs={"leave": True}), 1, 0, 0)
    env.reset()
    env.step(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(UserError, match="agent carrier_1 left its episode.*env.agents_can_leave=true"):
        env.step(torch.zeros(1, 3, dtype=torch.long))


def test_box_actions_with_unequal_bounds_are_mapped_from_minus_one_to_one():
    cfg = PettingZooConfig(id="byo_envs:relay", kwargs={"box": True})
    spec = pettingzoo_spec(cfg)
    assert spec.action_bounds == (-1.0, 1.0) and not spec.discrete_actions and spec.n_actions == 2
    env = make_pettingzoo(cfg, 1, 0, 0)
    env.reset()
    step = env.step(torch.tensor([[[-1.0, 1.0], [-1.0, 0.0], [0.0, 1.0]]]))
    # each agent observes its own last action, in its own bounds: scout [-2, 2], carrier_0 [0, 1], carrier_1 [0, 10]
    assert step.next_obs[0, 0, :2].tolist() == [-2.0, 2.0]
    assert step.next_obs[0, 1, :2].tolist() == [0.0, 0.5]
    assert step.next_obs[0, 2, :2].tolist() == [5.0, 10.0]


def test_the_global_state_comes_with_every_step_and_the_reset_after_an_episode():
    env = make_pettingzoo(PettingZooConfig(id="byo_envs:relay", kwargs={"max_cycles": 2}), 2, 0, 0)
    env.provide_state = True
    env.reset()
    assert env.context()["state"].tolist() == [[0.0, 3.0]] * 2
    step = env.step(torch.zeros(2, 3, dtype=torch.long))
    assert step.next_state.tolist() == [[1.0, 3.0]] * 2 and env.context()["state"].tolist() == [[1.0, 3.0]] * 2
    step = env.step(torch.zeros(2, 3, dtype=torch.long))
    assert step.episode_end.all()
    assert step.next_state.tolist() == [[2.0, 0.0]] * 2  # the true successor, every agent gone
    assert env.context()["state"].tolist() == [[0.0, 3.0]] * 2  # the new episode's


def test_copies_in_worker_processes_step_as_those_in_this_one():
    cfg = PettingZooConfig(id="mpe2.simple_spread_v3", kwargs={"N": 3, "max_cycles": 5})
    here, there = make_pettingzoo(cfg, 3, 0, 1), make_pettingzoo(cfg, 3, 2, 1)
    here.provide_state = there.provide_state = True
    try:
        assert torch.equal(here.reset(), there.reset()) and torch.equal(here.context()["state"], there.context()["state"])
        g = torch.Generator().manual_seed(0)
        for _ in range(8):
            actions = torch.randint(5, (3, 3), generator=g)
            a, b = here.step(actions), there.step(actions)
            for x, y in zip(a, b):
                if isinstance(x, torch.Tensor):
                    assert torch.equal(x, y)
            assert torch.equal(here.context()["state"], there.context()["state"])
    finally:
        here.close(), there.close()


# ---------------------------------------------------------------------------- PettingZoo: specs
def test_specs_are_read_from_the_spaces():
    spread = pettingzoo_spec(PettingZooConfig(id="mpe2.simple_spread_v3", kwargs={"N": 3}))
    assert spread.teams == ("agent",) * 3 and spread.homogeneous and spread.discrete_actions and spread.n_actions == 5
    assert spread.obs_shape == (18,) and spread.state_shape == (54,) and "state" in spread.capabilities
    adversary = pettingzoo_spec(PettingZooConfig(id="mpe2.simple_adversary_v3"))
    assert adversary.teams == ("adversary", "agent", "agent") and not adversary.homogeneous
    assert adversary.obs_shape == (10,) and adversary.agent_obs_sizes == (8, 10, 10)
    walkers = pettingzoo_spec(PettingZooConfig(id="pettingzoo.sisl.multiwalker_v9"))
    assert not walkers.discrete_actions and walkers.n_actions == 4 and walkers.action_bounds == (-1.0, 1.0)
    pong = pettingzoo_spec(PettingZooConfig(id="pettingzoo.butterfly.cooperative_pong_v6"))
    assert pong.obs_shape == (280, 480, 3) and pong.obs_storage_dtype == torch.uint8 and pong.teams == ("paddle", "paddle")
    kaz = pettingzoo_spec(PettingZooConfig(id="pettingzoo.butterfly.knights_archers_zombies_v11", agents_can_leave=True))
    assert kaz.teams == ("archer", "archer", "knight", "knight") and kaz.obs_shape == (135,) and kaz.agents_can_die
    relay = pettingzoo_spec(PettingZooConfig(id="byo_envs:relay", teams=["a", "b", "b"], state=False))
    assert relay.teams == ("a", "b", "b") and not relay.homogeneous and "state" not in relay.capabilities
    assert relay.name == "relay" and relay.agent_obs_sizes == (3, 5, 5)


def test_the_spec_says_which_algorithms_fit():
    fits = lambda spec: {n for n, e in ALGORITHMS.items() if not unmet_needs(e.cls, spec)}  # noqa: E731
    assert fits(pettingzoo_spec(PettingZooConfig(id="mpe2.simple_spread_v3"))) == {"super_ddqn", "qmix", "ippo", "mappo", "maddpg"}
    assert fits(pettingzoo_spec(PettingZooConfig(id="pettingzoo.sisl.multiwalker_v9"))) == {"ippo", "mappo", "maddpg"}
    assert fits(pettingzoo_spec(PettingZooConfig(id="byo_envs:relay", agents_can_leave=True))) == {"ippo", "mappo"}


@pytest.mark.parametrize("env_id, kwargs, message", [
    ("no_such_package.envs", {}, r"env.id=no_such_package.envs: there is no module 'no_such_package'.*give the import path"),
    ("mpe2.no_such_env_v1", {}, r"env.id=mpe2.no_such_env_v1: module mpe2 has no no_such_env_v1"),
    ("pettingzoo.classic.tictactoe_v3", {}, r"module pettingzoo.classic.tictactoe_v3 has no parallel_env\(\)"),
    ("byo_envs:turn_based", {}, r"made an AEC \(turn-based\) environment.*aec_to_parallel"),
    ("byo_envs:not_an_environment", {}, r"made a \w+, not a PettingZoo ParallelEnv"),
    ("byo_envs:NOT_CALLABLE", {}, r"NOT_CALLABLE in byo_envs is a int, not a function"),
    ("byo_envs:dict_observations", {}, r"agent scout_0's observation space is Dict, which marlrun cannot take; .*Box observations"),
    ("byo_envs:multidiscrete_actions", {}, r"action space is MultiDiscrete, which marlrun cannot take \(MultiDiscrete: one Discrete"),
    ("mpe2.simple_spread_v3", {"no_such_argument": 1}, r"env.kwargs: building mpe2.simple_spread_v3 with \{'no_such_argument': 1\} failed \(TypeError: "),
])
def test_what_cannot_work_is_one_line(env_id, kwargs, message):
    with pytest.raises(UserError, match=message) as caught:
        pettingzoo_spec(PettingZooConfig(id=env_id, kwargs=kwargs))
    assert "\n" not in str(caught.value)


def test_teams_of_the_wrong_length_are_refused():
    with pytest.raises(UserError, match=r"env.teams: gives 2 teams for 3 agents \(scout_0, carrier_0, carrier_1\)"):
        pettingzoo_spec(PettingZooConfig(id="byo_envs:relay", teams=["a", "b"]))


def test_frames_come_from_the_environments_own_render():
    plain = make_pettingzoo(PettingZooConfig(id="mpe2.simple_spread_v3", kwargs={"N": 3}), 1, 0, 0)
    plain.reset()
    with pytest.raises(UserError, match=r"cannot draw simple_spread_v3: .*add it to its arguments: env.kwargs.render_mode=rgb_array"):
        plain.frame(0)
    env = make_pettingzoo(PettingZooConfig(id="mpe2.simple_spread_v3", kwargs={"N": 3, "render_mode": "rgb_array"}), 2, 0, 0)
    env.reset()
    first = env.frame(1)
    env.step(torch.full((2, 3), 2))
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[-1] == 3 and env.frame(1).shape == first.shape


# ---------------------------------------------------------------------------- VMAS
def test_vmas_adapter_steps_as_vmas_does():
    """Balance with random forces: some copies drop the package (terminated) and reset on their own, the others run to
    the time limit. The adapter's run is recorded, then replayed into VMAS's own environment, built and reset with the
    same seed, resetting ended copies as VMAS's API does."""
    import vmas

    E, seed = 16, 3
    cfg = VmasConfig(scenario="balance", max_steps=40, kwargs={"n_agents": 3})
    env = make_vmas(cfg, E, 0, seed)
    g = torch.Generator().manual_seed(0)
    first, record = env.reset(), []
    for _ in range(70):
        actions = torch.rand(E, 3, 2, generator=g) * 2 - 1
        record.append((actions, env.step(actions)))
    raw = vmas.make_env("balance", num_envs=E, seed=vmas_seed(seed), max_steps=40, terminated_truncated=True, n_agents=3)
    assert torch.equal(first, torch.stack(raw.reset(seed=vmas_seed(seed)), dim=1))
    partial = full = 0
    for actions, step in record:
        obs, rewards, terminated, truncated, _ = raw.step([actions[:, i] for i in range(3)])
        assert torch.equal(step.next_obs, torch.stack(obs, dim=1))
        assert torch.equal(step.reward, torch.stack(rewards, dim=1))
        assert torch.equal(step.terminated[:, 0], terminated) and torch.equal(step.truncated[:, 0], truncated & ~terminated)
        done = terminated | truncated
        assert torch.equal(step.episode_end, done)
        if done.all():
            obs, full = raw.reset(), full + 1
        elif done.any():
            for e in done.nonzero().squeeze(1).tolist():
                raw.reset_at(e)
            obs, partial = raw.get_from_scenario(get_observations=True, get_rewards=False, get_infos=False, get_dones=False)[0], partial + 1
        assert torch.equal(step.obs, torch.stack(obs, dim=1))
    assert partial >= 2  # copies ended at different steps and were reset alone


def test_vmas_draws_do_not_move_torchs_generator_nor_each_others():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    cfg = VmasConfig(scenario="navigation", max_steps=3)
    alone = make_vmas(cfg, 4, 0, 0)
    starts = [alone.reset()] + [alone.step(torch.zeros(4, 4, 2)).obs for _ in range(6)]  # two resets on the way
    assert torch.equal(torch.rand(3), expected)
    beside, other = make_vmas(cfg, 4, 0, 0), make_vmas(cfg, 4, 0, 1)
    seen = [beside.reset()]
    for _ in range(6):
        other.reset(), other.step(torch.zeros(4, 4, 2))  # another environment drawing in between
        seen.append(beside.step(torch.zeros(4, 4, 2)).obs)
    assert all(torch.equal(a, b) for a, b in zip(starts, seen))
    assert torch.equal(beside.reset(), starts[0])  # every reset() starts the same episodes (evaluations compare)


def test_vmas_specs_and_discrete_actions():
    nav = vmas_spec(VmasConfig(scenario="navigation", kwargs={"n_agents": 3}))
    assert nav.teams == ("agent",) * 3 and nav.homogeneous and not nav.discrete_actions and nav.n_actions == 2
    assert nav.action_bounds == (-1.0, 1.0) and "state" not in nav.capabilities
    adversary = vmas_spec(VmasConfig(scenario="simple_adversary", continuous_actions=False))
    assert adversary.teams == ("adversary", "agent", "agent") and adversary.agent_obs_sizes == (8, 10, 10) and adversary.discrete_actions
    env = make_vmas(VmasConfig(scenario="balance", continuous_actions=False, kwargs={"n_agents": 3}), 4, 0, 0)
    obs = env.reset()
    step = env.step(torch.randint(env.spec.n_actions, (4, 3)))
    assert obs.shape == step.next_obs.shape == (4, 3, 16) and step.reward.shape == (4, 3)


@pytest.mark.parametrize("cfg, message", [
    (dict(scenario="navigaton"), r"env.scenario: VMAS has no scenario 'navigaton' \(did you mean navigation\?\); pick one of balance,"),
    (dict(scenario="navigation", kwargs={"n_agnets": 3}), r"env.kwargs: VMAS scenario navigation does not take \{'n_agnets': 3\}"),
])
def test_vmas_mistakes_are_one_line(cfg, message):
    with pytest.raises(UserError, match=message):
        vmas_spec(VmasConfig(**cfg))


def test_vmas_frames():
    env = make_vmas(VmasConfig(scenario="navigation"), 2, 0, 0)
    env.reset()
    frame = env.frame(1)
    assert frame.shape == (400, 400, 3) and frame.dtype == np.uint8 and (frame != 255).any()


# ---------------------------------------------------------------------------- every algorithm on them
NEW_ENVS = {
    "simple_spread": ["env=pettingzoo", "env.id=mpe2.simple_spread_v3", "+env.kwargs={N: 3, max_cycles: 25}"],
    "multiwalker": ["env=pettingzoo", "env.id=pettingzoo.sisl.multiwalker_v9", "+env.kwargs={n_walkers: 2, max_cycles: 50}"],
    "vmas_navigation": ["env=vmas", "env.scenario=navigation", "+env.kwargs={n_agents: 2}", "env.max_steps=50"],
    "vmas_balance_discrete": ["env=vmas", "env.scenario=balance", "+env.kwargs={n_agents: 3}", "env.max_steps=50", "env.continuous_actions=false"],
}
SMALL = {  # what makes a 300-step run update
    "super_ddqn": ["algo.buffer_size=1000", "algo.learning_starts=100"],
    "qmix": ["algo.buffer_size=1000", "algo.learning_starts=100"],
    "ippo": ["algo.rollout_steps=50"],
    "mappo": ["algo.rollout_steps=50"],
    "maddpg": ["algo.buffer_size=1000", "algo.learning_starts=100", "algo.batch_size=32", "algo.update_interval=50"],
    "mfq": ["algo.buffer_size=1000", "algo.learning_starts=100"],
    "mcmc": [],
}


@pytest.mark.parametrize("env", sorted(NEW_ENVS))
@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_algorithm_trains_on_the_new_environments_or_is_refused_in_one_line(compose_cfg, tmp_path, env, algo):
    cfg = compose_cfg([*NEW_ENVS[env], f"algo={algo}", *SMALL[algo], "hardware=cpu", "hardware.num_envs=2", "hardware.env_workers=0",
                       "total_steps=300", "log_interval=100", "eval_episodes=1", "progress=false", "print_config=false"])
    from marlrun.registry import entry
    from omegaconf import OmegaConf

    spec = entry("env", cfg.env.name).spec(OmegaConf.to_object(cfg.env))
    unmet = unmet_needs(ALGORITHMS[algo].cls, spec)
    if unmet:
        with pytest.raises(UserError) as caught:
            train(cfg, tmp_path)
        text = str(caught.value)
        assert "\n" not in text and text.startswith(f"algo={algo} needs {unmet[0]}") and "Algorithms that fit" in text
        return
    summary = train(cfg, tmp_path)
    assert summary["status"] == "finished" and summary["env_steps"] == 300
    assert any(k.startswith("train/") and "loss" in k for r in read_metrics(tmp_path) for k in r)  # it learned, not only acted
