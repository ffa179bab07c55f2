"""Selective parameter sharing (SePS): the clustering, the layout of clusters in weight sets, the switch from one
network to K, its checkpoint, and the types it finds on blind-particle spread."""

import copy
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.metrics import adjusted_rand_score

from marlrun.algos.ppo import PPO, PPOConfig
from marlrun.algos.seps import Groups, SePSConfig, TransitionStore, cluster_agents, sharing_mode
from marlrun.algos.super_ddqn import SuperDDQN, SuperDDQNConfig
from marlrun.build import make_env
from marlrun.config import validate
from marlrun.envs.blind_spread import BlindSpreadConfig, agent_types
from marlrun.errors import UserError
from conftest import run_cli, run_dirs

CPU = torch.device("cpu")
BPS = ["experiment=seps_blind_spread", "hardware=cpu", "progress=false", "print_config=false"]


def build_ppo(compose_cfg, *overrides, num_envs=16):
    cfg = validate(compose_cfg([*BPS, f"hardware.num_envs={num_envs}", *overrides]))
    env = make_env(cfg, num_envs, 0, CPU)
    algo = PPO(OmegaConf.to_object(cfg.algo), env.spec, num_envs, CPU, 0)
    env.provide_state = algo.uses_state
    return cfg, env, algo


def play(env, algo, steps, start=0, obs=None):
    """Act, step, observe and update ``steps`` times (as the runner does, without its one-step pipeline)."""
    obs = env.reset() if obs is None else obs
    logs = []
    for t in range(start, start + steps):
        context = env.context()
        actions = algo.act(obs, t * env.num_envs, context=context)
        step = env.step(actions)
        algo.observe(obs, actions, step, context)
        logs.append(algo.update((t + 1) * env.num_envs))
        obs = step.obs
    return obs, logs


def outputs(algo: PPO, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every agent's policy logits and value [E, n, ...] for observations [E, A, ...] (team 0)."""
    team = algo.learners[0]
    own = algo.own_input(team, obs)
    with torch.no_grad():
        logits = team.from_sets(algo.distribution(0, team.to_sets(own)), obs.shape[0])
        value = team.from_sets(algo.values(0, team, own, None), obs.shape[0])  # IPPO: no shared input
    return logits, value


# ---------------------------------------------------------------------------- the clustering
@pytest.mark.parametrize("sizes", [[4, 4, 4], [2, 3, 5, 6]])
def test_kmeans_with_davies_bouldin_recovers_synthetic_groups(sizes):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (len(sizes), 10))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    latents = centres[truth] + rng.normal(0, 0.1, (len(truth), 10))
    order = rng.permutation(len(truth))  # groups not in index order
    labels, scores = cluster_agents(latents[order], None, 10, seed=0)
    assert adjusted_rand_score(truth[order], labels) == 1.0
    assert labels.max() + 1 == len(sizes) and min(scores, key=scores.get) == len(sizes)
    assert sorted(scores) == list(range(2, min(len(truth) - 1, 10) + 1))
    assert labels[0] == 0  # numbered by first appearance
    given, none = cluster_agents(latents, len(sizes), 10, seed=0)
    assert adjusted_rand_score(truth, given) == 1.0 and none == {}
    capped, scores = cluster_agents(latents, None, 2, seed=0)  # max_clusters caps the search
    assert sorted(scores) == [2] and capped.max() == 1


def test_groups_lay_clusters_out_in_padded_sets_and_back():
    g = Groups(torch.tensor([2, 0, 1, 0, 0, 2, 1]))
    assert (g.S, g.m, g.kind) == (3, 3, "selective")
    assert g.slots.tolist()[0] == [1, 3, 4] and g.mask.sum() == 7
    x = torch.arange(4 * 7 * 2).view(4, 7, 2).float()  # [B, n, F]
    sets = g.split(x)
    assert sets.shape == (3, 4 * 3, 2)
    assert torch.equal(sets[0].view(4, 3, 2), x[:, [1, 3, 4]])  # set 0 holds agents 1, 3, 4, batch-major
    assert torch.equal(g.join(sets, 4), x)
    mask = g.sample_mask(4).view(3, 4, 3)
    assert mask[1, :, 2].sum() == 0 and mask[1, :, :2].all() and mask[0].all()  # set 1 has 2 agents and one padding slot
    agents_first = x.transpose(0, 1).contiguous()  # [n, B, F]
    assert torch.equal(g.join_agents_first(g.split_agents_first(agents_first), 4), agents_first)
    for mode, S in (("all", 1), ("none", 7)):
        h = Groups.of(mode, 7)
        assert h.S == S and h.kind == mode and h.sample_mask(4) is None
        assert torch.equal(h.join(h.split(x), 4), x) and torch.equal(h.join_agents_first(h.split_agents_first(agents_first), 4), agents_first)
    assert torch.equal(Groups.of("all", 7).split(x), x.reshape(1, 28, 2))


def test_transition_store_keeps_the_latest_and_only_the_living():
    store = TransitionStore(2, 5, 3, 4, CPU)
    for t in range(3):  # 3 batches of 2 steps: the first step is overwritten
        obs = torch.full((2, 2, 3), float(t))
        alive = torch.tensor([[True, False], [True, True]])
        store.add(obs, torch.zeros(2, 2, 4), torch.full((2, 2), float(t)), obs + 1, alive)
    agent, obs, action, reward, next_obs = store.transitions()
    # 6 steps written, the latest 5 kept; agent 1 was dead in every other step (2 of the kept): 10 - 2 transitions
    assert store.size == 5 and len(agent) == 8 and (agent == 1).sum() == 3
    assert torch.equal(next_obs, obs + 1) and torch.equal(obs[:, 0], reward)


def test_sharing_mode_takes_the_old_booleans_and_refuses_the_rest():
    assert sharing_mode(True) == "all" and sharing_mode("false") == "none" and sharing_mode("Selective") == "selective"
    with pytest.raises(UserError, match="'sometimes' is not one of none, all, selective"):
        sharing_mode("sometimes")
    with pytest.raises(UserError, match="selective sharing is built for ippo, mappo and super_ddqn"):
        sharing_mode("selective", allowed=("none", "all"))
    with pytest.raises(UserError, match="algo.seps.clusters"):
        SePSConfig(clusters=0)


# ---------------------------------------------------------------------------- the switch
def test_switch_to_clusters_keeps_every_output_and_adams_moments(compose_cfg):
    # MAPPO with convolutions on the small pursuit: the conv torso too is copied into every set
    cfg = validate(compose_cfg(["algo=mappo", "env=pursuit_small", "algo.conv_channels=[4]", "algo.parameter_sharing=selective",
                                "hardware=cpu", "hardware.num_envs=2", "progress=false", "print_config=false", "algo.rollout_steps=4"]))
    env = make_env(cfg, 2, 0, CPU)
    algo = PPO(OmegaConf.to_object(cfg.algo), env.spec, 2, CPU, 0)
    env.provide_state = algo.uses_state
    obs, _ = play(env, algo, 4)  # one update: Adam has moments
    state = env.context().get("state")
    team = algo.learners[0]

    def outs():
        own = algo.own_input(team, obs)
        with torch.no_grad():
            return (team.from_sets(algo.distribution(0, team.to_sets(own)), 2),
                    team.from_sets(algo.values(0, team, own, algo.state_input(obs, state)), 2))

    before = outs()
    moment = algo.optimizer.state[algo.actors[0][1][0].weight]["exp_avg"].clone()
    algo.use_clusters("pursuer", torch.tensor([0, 1, 1, 0]))
    assert team.n_sets == 2 and algo.actors[0][1][0].weight.shape[0] == 2
    after = outs()
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    carried = algo.optimizer.state[algo.actors[0][1][0].weight]["exp_avg"]
    assert torch.equal(carried, moment.expand_as(carried))
    play(env, algo, 4, start=4, obs=obs)  # and it learns on: an update with the two sets
    assert algo.updates == 2
    env.close()


def test_super_ddqn_switch_keeps_q_and_each_cluster_learns_alone():
    from test_super_ddqn import random_step, spec

    algo = SuperDDQN(SuperDDQNConfig(buffer_size=256, parameter_sharing="selective", learning_starts=0), spec(("p",) * 4), 2, CPU, seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        step = random_step(gen, 2, 4)
        algo.observe(step.obs, torch.randint(0, 5, (2, 4), generator=gen), step)
        algo.update(100)
    obs = torch.rand(4, 3, 7, 7, 3)
    with torch.no_grad():
        before = algo._q_values(algo.q, obs), algo._q_values(algo.q_target, obs)
    algo.use_clusters(torch.tensor([0, 1, 0, 2]))
    with torch.no_grad():
        after = algo._q_values(algo.q, obs), algo._q_values(algo.q_target, obs)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert algo.q.value.weight.shape[0] == 3
    old = [p.detach().clone() for p in algo.q.parameters()]
    batch = algo.replay.sample(4)
    td = algo.td_error(batch["obs"], batch["action"], batch["reward"], batch["next_obs"], batch["terminated"])
    td[1].sum().backward()  # agent 1's loss moves only cluster 1's weights
    grads = [p.grad for p in algo.q.parameters()]
    assert all(g[0].abs().sum() == 0 and g[2].abs().sum() == 0 and g[1].abs().sum() > 0 for g in grads)
    assert all(torch.equal(p, q) for p, q in zip(old, algo.q.parameters()))


# ---------------------------------------------------------------------------- on blind-particle spread
def test_encoder_finds_the_colours_of_blind_spread_and_resume_and_eval_restore_them(compose_cfg, tmp_path):
    # 4,000 env steps of full sharing (60,000 transitions; 30 epochs: at 10 the reward's small share of the squared
    # error leaves two colours' latents together this early)
    overrides = ("algo.seps.pretraining_steps=4000", "algo.seps.epochs=30", "algo.rollout_steps=25")
    _, env, algo = build_ppo(compose_cfg, *overrides)
    obs, logs = play(env, algo, 240)  # 3,840 env steps: the clustering is due at the next update, at 4,000
    assert algo.learners[0].n_sets == 1 and algo.seps["agent"].store is not None
    # a copy mid-run, then both through the clustering: the same clusters and the same learner after it
    _, _, restored = build_ppo(compose_cfg, *overrides)
    restored.load_state_dict(copy.deepcopy(algo.state_dict()))
    results = []
    for learner, copy_of_env in ((algo, copy.deepcopy(env)), (restored, env)):  # the same games for both
        _, logs = play(copy_of_env, learner, 50, start=240, obs=obs.clone())
        results.append(logs)
    truth = agent_types(BlindSpreadConfig()).numpy()
    for learner in (algo, restored):
        part = learner.seps["agent"]
        assert part.record["clusters"] == 3, part.record["davies_bouldin"]  # K chosen by Davies-Bouldin: the 3 colours
        assert adjusted_rand_score(truth, part.assignment.numpy()) == 1.0
        assert learner.learners[0].n_sets == 3 and part.store is None
    assert min(algo.seps["agent"].record["davies_bouldin"].items(), key=lambda kv: kv[1])[0] == "3"
    switched = [log for log in results[0] if "seps/clusters" in log]
    assert len(switched) == 1 and switched[0]["seps/cluster/agent_14"] == 2
    assert json.dumps(algo.pending_files["seps_clusters.json"])  # what the run folder keeps
    for p, q in zip(algo.nets.state_dict().values(), restored.nets.state_dict().values()):
        assert torch.equal(p, q)
    # a fresh learner (eval, resume) given the clustered state rebuilds the three sets
    _, _, fresh = build_ppo(compose_cfg, *overrides)
    fresh.load_state_dict(copy.deepcopy(algo.state_dict()))
    assert fresh.learners[0].n_sets == 3 and torch.equal(fresh.learners[0].groups.assignment, algo.learners[0].groups.assignment)
    obs = env.reset()
    for a, b in zip(outputs(algo, obs), outputs(fresh, obs)):
        assert torch.equal(a, b)
    env.close()


def test_selective_run_keeps_its_clusters_in_the_folder_and_eval_and_resume_use_them(tmp_path):
    args = ["train", *BPS, "algo.parameter_sharing=selective", "algo.seps.pretraining_steps=1600", "algo.seps.epochs=2",
            "algo.rollout_steps=25", "hardware.num_envs=8", "total_steps=3200", "eval_interval=1600", "eval_episodes=2",
            "checkpoint_interval=1600", "log_interval=800", f"hydra.run.dir={tmp_path}/run"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "run"
    record = json.loads((run / "seps_clusters.json").read_text())["agent"]
    assert record["env_steps"] == 1600 and sum(1 for _ in record["agents"]) == 15 and record["encoder_loss"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("seps/clusters" in row for row in logged)
    result = run_cli("eval", str(run), "episodes=2")
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("train", f"resume={run}", "total_steps=4800")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["env_steps"] == 4800
    assert run_dirs(tmp_path) == [run]


def test_selective_is_refused_where_it_is_not_built(compose_cfg):
    with pytest.raises(UserError, match="selective sharing is built for ippo, mappo and super_ddqn"):
        validate(compose_cfg(["algo=qmix", "env=pursuit_small", "algo.parameter_sharing=selective"]))


def test_a_run_too_short_to_cluster_is_refused_and_idle_seps_keys_are_named():
    for cls, cfg in ((PPO, PPOConfig(parameter_sharing="selective")),
                     (SuperDDQN, SuperDDQNConfig(parameter_sharing="selective"))):
        with pytest.raises(UserError, match=r"algo.seps.pretraining_steps=50,000 >= total_steps=50,000: the agents would never be clustered"):
            cls.check_run(cfg, 50_000, 1)
    warnings = SuperDDQN.ineffective(SuperDDQNConfig(parameter_sharing="all", seps=SePSConfig(clusters=3)), None)
    assert warnings == ["algo.seps.clusters=3 has no effect with algo.parameter_sharing=all (only with selective)"]


# ---------------------------------------------------------------------------- blind-particle spread
def test_blind_spread_moves_as_mpes_own_physics_does():
    # the same world in mpe2's engine (World.step: forces, damping, integration), stepped with the same actions
    from mpe2._mpe_utils.core import Agent, Landmark, World

    from marlrun.envs.blind_spread import BlindSpreadVecEnv

    cfg = BlindSpreadConfig(groups=[2, 3], max_cycles=40)
    env = BlindSpreadVecEnv(cfg, 1, seed=3)
    obs = env.reset()
    world = World()
    world.dim_c = 2
    world.agents = [Agent() for _ in range(5)]
    world.landmarks = [Landmark() for _ in range(2)]
    for agent, pos in zip(world.agents, env.pos[0].double().numpy()):
        agent.collide, agent.silent, agent.size = False, True, 0.15
        agent.state.p_pos, agent.state.p_vel, agent.state.c = pos.copy(), np.zeros(2), np.zeros(2)
    for landmark, pos in zip(world.landmarks, env.landmarks[0].double().numpy()):
        landmark.collide, landmark.movable = False, False
        landmark.state.p_pos, landmark.state.p_vel = pos.copy(), np.zeros(2)
    moves = {0: (0, 0), 1: (-1, 0), 2: (1, 0), 3: (0, -1), 4: (0, 1)}
    rng = np.random.default_rng(0)
    colour = agent_types(cfg).numpy()
    for t in range(39):
        actions = rng.integers(0, 5, 5)
        for agent, a in zip(world.agents, actions):
            agent.action.u, agent.action.c = 5.0 * np.array(moves[int(a)], dtype=float), np.zeros(2)
        world.step()
        step = env.step(torch.as_tensor(actions)[None])
        positions = np.array([a.state.p_pos for a in world.agents])
        np.testing.assert_allclose(env.pos[0].numpy(), positions, atol=1e-5)
        np.testing.assert_allclose(env.vel[0].numpy(), [a.state.p_vel for a in world.agents], atol=1e-5)
        goals = np.array([world.landmarks[c].state.p_pos for c in colour])
        np.testing.assert_allclose(step.reward[0].numpy(), -0.5 * np.linalg.norm(positions - goals, axis=1), atol=1e-5)
        expected = [np.concatenate([a.state.p_vel, a.state.p_pos, *[lm.state.p_pos - a.state.p_pos for lm in world.landmarks]]) for a in world.agents]
        np.testing.assert_allclose(step.obs[0].numpy(), expected, atol=1e-5)
        assert not step.truncated.any()
    step = env.step(torch.zeros(1, 5, dtype=torch.long))  # step 40: the time limit, a new episode
    assert step.truncated.all() and step.episode_end.all() and set(step.episode_info) == {"game/final_distance", "game/on_landmark"}
    assert not torch.equal(step.obs, step.next_obs) and env.steps[0] == 0
    assert env.frame(0).shape == (400, 400, 3)
