"""Every config composes; typos, wrong types and out-of-range values fail naming the key."""

from pathlib import Path

import pytest

from marlrun.config import validate
from marlrun.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("algo", options("algo"))
@pytest.mark.parametrize("env", options("env"))
@pytest.mark.parametrize("hardware", options("hardware"))
def test_every_group_option_composes_and_validates(compose_cfg, algo, env, hardware):
    cfg = compose_cfg([f"algo={algo}", f"env={env}", f"hardware={hardware}"])
    assert cfg.algo.name == algo and cfg.env.name == ("pursuit" if env == "pursuit_small" else env)  # a preset names its schema's
    validate(cfg)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_composes(compose_cfg, experiment):
    cfg = compose_cfg([f"experiment={experiment}"])
    validate(cfg)


def test_defaults_are_the_reference_settings(compose_cfg):
    cfg = compose_cfg()
    a = cfg.algo
    assert (a.lr, a.buffer_size, a.target_update_interval, a.rollout_fragment, a.batch_size, a.gamma) == (1.6e-4, 120_000, 1000, 4, 32, 0.99)
    assert (a.epsilon_start, a.epsilon_end, a.epsilon_decay_steps, a.learning_starts, a.max_grad_norm) == (0.1, 0.001, 100_000, 1000, 40.0)
    assert (a.per_alpha, a.per_beta, a.per_eps, a.prioritized) == (0.6, 0.4, 1e-6, True)
    assert (a.sharing, a.bandwidth, a.window) == ("quantile", 0.1, 1500)
    e = cfg.env
    assert (e.x_size, e.y_size, e.n_pursuers, e.n_evaders, e.obs_range, e.n_catch, e.max_cycles) == (16, 16, 8, 30, 7, 2, 500)


def test_misspelled_key_names_the_key(compose_cfg):
    with pytest.raises(Exception) as info:
        compose_cfg(["algo.bandwith=0.2"])
    assert "bandwith" in str(info.value) + str(info.value.__cause__)


def test_wrong_type_names_the_key(compose_cfg):
    with pytest.raises(Exception) as info:
        compose_cfg(["algo.window=many"])
    assert "window" in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize("override, key", [
    ("algo.bandwidth=0", "algo.bandwidth"),
    ("algo.bandwidth=1.5", "algo.bandwidth"),
    ("algo.window=0", "algo.window"),
    ("total_steps=-5", "total_steps"),
    ("algo.sharing=sometimes", "algo.sharing"),
    ("hardware.num_envs=0", "hardware.num_envs"),
    ("env.obs_range=4", "env.obs_range"),
])
def test_out_of_range_values_name_the_key(compose_cfg, override, key):
    cfg = compose_cfg([override])
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_bandwidth_one_is_allowed(compose_cfg):
    validate(compose_cfg(["algo.bandwidth=1.0"]))


@pytest.mark.parametrize("override, key", [("+foo=1", "foo"), ("+algo.lrr=0.1", "algo.lrr"), ("+hardware.gpus=2", "hardware.gpus")])
def test_keys_added_with_plus_are_refused(compose_cfg, override, key):
    with pytest.raises(UserError, match=f"unknown config key '{key}'"):
        validate(compose_cfg([override]))


def test_maddpg_defaults_are_the_reference_settings(compose_cfg):
    cfg = compose_cfg(["algo=maddpg", "env=simple_adversary"])
    a = cfg.algo
    assert (a.actor_lr, a.critic_lr, a.gamma, a.batch_size, a.buffer_size, a.learning_starts) == (1e-2, 1e-2, 0.95, 1024, 1_000_000, 25_600)
    assert (a.update_interval, a.tau, a.max_grad_norm, list(a.hidden), a.actor_reg) == (100, 0.01, 0.5, [64, 64], 1e-3)
    assert (a.critic, list(a.ddpg_teams), a.gumbel_temperature, a.gumbel_hard) == ("maddpg", [], 1.0, False)
    e = cfg.env
    assert (e.N, e.max_cycles, e.continuous_actions) == (2, 25, False)


@pytest.mark.parametrize("override", ["algo.ddpg_teams=[adversary]", "algo.ddpg_teams=[good]", "algo.critic=ddpg",
                                      "env.continuous_actions=true", "algo.gumbel_hard=true"])
def test_maddpg_match_up_overrides_compose(compose_cfg, override):
    validate(compose_cfg(["experiment=maddpg_adversary", override]))


def test_experiment_presets_override_the_run_keys(compose_cfg):
    cfg = compose_cfg(["experiment=maddpg_adversary"])
    assert (cfg.algo.name, cfg.env.name, cfg.total_steps, cfg.eval_interval, cfg.eval_episodes) == ("maddpg", "simple_adversary", 150_000, 25_000, 100)
    assert cfg.hardware.env_workers == 0
    cfg = compose_cfg(["experiment=super_pursuit", "total_steps=5000"])  # the command line still wins over the preset
    assert (cfg.total_steps, cfg.eval_interval, cfg.eval_episodes) == (5000, 4000, 20)


def test_mfq_defaults_are_the_papers_battle_settings(compose_cfg):
    cfg = compose_cfg(["algo=mfq", "env=battle"])
    a, e = cfg.algo, cfg.env
    assert (a.lr, a.gamma, a.tau, a.batch_size, a.buffer_size) == (1e-4, 0.95, 0.005, 64, 80_000)
    assert (list(a.conv_channels), a.obs_hidden, list(a.hidden)) == ([32, 32], 256, [128, 64])
    assert (a.controller, a.opponent, a.rounds) == ("mfq", "mfq", 0)
    assert (e.map_size, e.max_cycles, e.view_radius) == (40, 400, 6)


@pytest.mark.parametrize("experiment, controller, opponent", [("mfq_battle", "mfq", "random"), ("mfq_vs_il", "mfq", "iql")])
def test_mean_field_presets_set_the_sides(compose_cfg, experiment, controller, opponent):
    cfg = compose_cfg([f"experiment={experiment}"])
    assert (cfg.algo.name, cfg.env.name, cfg.algo.controller, cfg.algo.opponent) == ("mfq", "battle", controller, opponent)
    assert cfg.eval_episodes == 50  # the paper's 50 evaluation rounds


def test_log_and_eval_intervals_fit_a_short_run_unless_given(compose_cfg):
    short = validate(compose_cfg(["total_steps=10000"]))
    assert (short.eval_interval, short.log_interval) == (2000, 500)  # 5 evaluations (and one at step 0), 20 records
    long = validate(compose_cfg(["total_steps=10000000"]))
    assert (long.eval_interval, long.log_interval) == (50000, 5000)  # the caps: the defaults of a long run
    given = validate(compose_cfg(["total_steps=10000", "eval_interval=3000", "log_interval=1000"]))
    assert (given.eval_interval, given.log_interval) == (3000, 1000)
    assert validate(compose_cfg(["total_steps=3"])).log_interval == 1
