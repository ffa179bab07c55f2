"""A hostile user's bad inputs, table-driven and in-process: each gets a non-zero exit, exactly one
`marlrun: error:` line naming the key or file, no traceback, and leaves everything already on disk as it was."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from marlrun.cli import main

TINY = ["total_steps=200", "log_interval=100", "checkpoint_interval=100", "eval_episodes=2", "eval_interval=0",
        "env.max_cycles=50", "env.x_size=8", "env.y_size=8", "env.n_pursuers=2", "env.n_evaders=3", "hardware=cpu",
        "hardware.num_envs=2", "hardware.env_workers=0", "algo.buffer_size=2000", "algo.learning_starts=100",
        "progress=false", "print_config=false"]

BYO = ["algo=ippo", "algo.rollout_steps=50", "total_steps=200", "log_interval=100", "eval_episodes=1", "hardware=cpu", "hardware.num_envs=2",
       "hardware.env_workers=0", "progress=false", "print_config=false"]
BYO_ANY = [k for k in BYO if not k.startswith("algo")]
PPO_TINY = ["algo=ippo", *(k for k in TINY if not k.startswith(("algo.buffer_size", "algo.learning_starts")))]


def call(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A finished run, RUN, and copies of it broken in the ways a shared or crashed run folder can be."""
    root = tmp_path_factory.mktemp("bad_input")
    run = root / "RUN"
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "marlrun.cli", "train", *TINY, f"hydra.run.dir={run}"], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    broken = {
        "GARBAGE_CONFIG": lambda d: (d / ".hydra/config.yaml").write_text("algo: [unclosed\n  : : :"),
        "LIST_CONFIG": lambda d: (d / ".hydra/config.yaml").write_text("- 1\n- 2\n"),
        "PICKLE_CONFIG": lambda d: _edit_config(d, lambda c: c["env"].update({"_target_": "numpy.load", "allow_pickle": True})),
        "OPEN_CONFIG": lambda d: _edit_config(d, lambda c: c["algo"].update({"_target_": "builtins.open"})),
        "ALIEN_CHECKPOINT": lambda d: [torch.save({"a": 1}, p) for p in (d / "checkpoints").glob("*.pt")],
        "GARBAGE_METRICS": lambda d: _edit_metrics(d, lambda lines: lines[:1] + ["{not json"] + lines[1:]),
        "STEPLESS_METRICS": lambda d: _edit_metrics(d, lambda lines: lines[:1] + ['{"train/loss": 1.0}'] + lines[1:]),
        "EVAL_IS_A_FILE": lambda d: (d / "eval").write_text("not a folder"),
    }
    for name, breaks in broken.items():
        shutil.copytree(run, root / name)
        breaks(root / name)
    (root / "a_file").write_text("keep me")
    return root


def _edit_config(folder: Path, change) -> None:
    path = folder / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    change(cfg)
    path.write_text(yaml.safe_dump(cfg))


def _edit_metrics(folder: Path, change) -> None:
    path = folder / "metrics.jsonl"
    path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")


R = "{root}/RUN"
CASES = [
    # --- a fresh run: values out of range, of the wrong type, non-finite, or impossible together
    (["train", *TINY, "algo.lr=inf"], ["algo.lr", "finite"]),
    (["train", *TINY, "algo.lr=nan"], ["algo.lr"]),
    (["train", *TINY, "algo.per_alpha=inf"], ["algo.per_alpha", "finite"]),
    (["train", *TINY, "algo.gamma=nan"], ["algo.gamma"]),
    (["train", *TINY, "seed=-1"], ["seed", "[0, 2**63 - 1]"]),
    (["train", *TINY, "seed=99999999999999999999"], ["seed", "[0, 2**63 - 1]"]),
    (["train", *TINY, "seed=abc"], ["seed"]),
    (["train", *TINY, "total_steps=abc"], ["total_steps"]),
    (["train", *TINY, "total_steps=-5"], ["total_steps", ">= 1"]),
    (["train", *TINY, "total_steps=0"], ["total_steps", ">= 1"]),
    (["train", *TINY, "hardware.num_envs=1000"], ["hardware.num_envs=1,000", "total_steps=200"]),
    (["train", *PPO_TINY, "algo.rollout_steps=1000000000"], ["algo.rollout_steps", "no update"]),
    (["train", *PPO_TINY, "algo.rollout_steps=16", "algo.minibatches=1000"], ["algo.minibatches=1000", "32 samples"]),
    (["train", *PPO_TINY, "algo.rollout_steps=16", "algo.lr_anneal=true", "algo.anneal_steps=10"],
     ["algo.anneal_steps=10", "learning rate reaches 0"]),
    (["train", *TINY, "log_interval=0"], ["log_interval", ">= 1"]),
    (["train", *TINY, "eval_episodes=-3"], ["eval_episodes", ">= 0"]),
    (["train", *TINY, "eval_interval=-1"], ["eval_interval"]),
    (["train", *TINY, "checkpoint_interval=0"], ["checkpoint_interval"]),
    (["train", *TINY, "keep_checkpoints=0"], ["keep_checkpoints"]),
    (["train", *TINY, "+newkey=1"], ["newkey"]),
    (["train", *TINY, "newkey=1"], ["newkey"]),
    (["train", *TINY, "algo.bandwidth=5"], ["algo.bandwidth", "(0, 1]"]),
    (["train", *TINY, "algo.bandwidth=-0.1"], ["algo.bandwidth"]),
    (["train", *TINY, "algo.window=0"], ["algo.window"]),
    (["train", *TINY, "algo.epsilon_start=2"], ["algo.epsilon_start"]),
    (["train", *TINY, "algo.batch_size=5000"], ["algo.batch_size", "algo.buffer_size"]),
    (["train", *TINY, "algo.batch_size=0"], ["algo.batch_size"]),
    (["train", *TINY, "algo.conv_channels=[]"], ["algo.conv_channels"]),
    (["train", *TINY, "algo.sharing=most"], ["algo.sharing", "quantile"]),
    (["train", "algo=maddpg", "env=simple_adversary", "hardware=cpu", "algo.batch_size=2048", "algo.buffer_size=1000"], ["algo.batch_size"]),
    (["train", "junk"], ["'junk' is not an override", "key=value"]),
    (["train", "env=simple_adversary", "env.name=simple_spread"], ["env.name=simple_spread", "env=NAME", "env=simple_spread"]),
    (["train", "algo.name=qmix"], ["algo.name names what is built", "algo=qmix"]),
    (["train", "experiment=mcmc_ising", "algo=qmix"], ["experiment=mcmc_ising sets algo.temperature", "QMIXConfig", "drop the algo= override"]),
    (["train", "experiment=mappo_battle", "env=pursuit"], ["experiment=mappo_battle sets env.", "PursuitConfig"]),
    (["train", "-m", "experiment=super_heuristics_small", "algo=qmix"],  # the preset's sweep clashes: named as such, no folder left
     ["hydra.sweeper.params sweeps algo.sharing", "a key of algo=super_ddqn", "hydra.sweeper.params=null"]),
    (["train", *TINY, "algo=qmix", "algo.sharing=none"], ["unknown config key 'algo.sharing'", "a key of algo=super_ddqn, not of the algo in use"]),
    (["train", "experiment=[mfq_ising,mcmc_ising]"], ["experiment=mfq_ising sets algo.", "MCMCConfig", "two presets for different algos"]),
    (["train", "algo=mfq", "env=battle", "env.map_size=16", "hardware=cpu", "hardware.num_envs=1", "total_steps=10", "progress=false",
      "algo.opponent=frozen:{root}/RUN"], ["algo.opponent=frozen:", "a run of algo=super_ddqn, not of MF-Q"]),
    (["train", "-m", *TINY, "hydra/sweeper=optuna", "hydra.sweeper.direction=sideways"], ["direction=sideways", "minimize or maximize"]),
    (["train", "-m", *TINY, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=0"], ["n_trials=0", "at least one trial"]),
    (["train", *TINY, "algo.parameter_sharing=2"], ["algo.parameter_sharing", "'2' is not one of none, all, selective"]),
    (["train", *TINY, "env.surround=yes"], ["env.surround", "true or false"]),
    (["train", *TINY, "algo.sharnig=none"], ["unknown config key 'algo.sharnig'", "did you mean algo.sharing?"]),
    (["train", *TINY, "+env.x_sise=8"], ["unknown config key 'env.x_sise'", "did you mean env.x_size?"]),
    (["train", *TINY, "algo.conv_kernel=99"], ["algo.conv_kernel", "do not fit a 7x7 observation", "<= 3"]),
    (["train", *TINY, "algo=qmix", "algo.conv_kernel=99"], ["algo.conv_kernel", "<= 3"]),
    (["train", "algo=mfq", "env=battle", "env.map_size=16", "hardware=cpu", "hardware.num_envs=1", "total_steps=10", "algo.conv_kernel=99",
      "progress=false", "print_config=false"], ["algo.conv_kernel", "13x13", "<= 7"]),
    (["train", *TINY, "algo._target_=builtins.open"], ["algo._target_", "unknown config key"]),  # nothing is built from a _target_
    (["train", *TINY, "env._target_=os.system"], ["env._target_", "unknown config key"]),
    (["train", *TINY, "hardware.device=tpu"], ["hardware.device", "tpu"]),
    (["train", *TINY, "hardware.precision=fp16"], ["hardware.precision", "fp16"]),
    (["train", *TINY, "hardware.torch_threads=-1"], ["hardware.torch_threads"]),
    (["train", *TINY, "hardware.env_workers=-1"], ["hardware.env_workers"]),
    (["train", *TINY, "hardware.num_envs=0"], ["hardware.num_envs"]),
    (["train", *TINY, "hardware.num_envs=100000000", "total_steps=1000000000"], ["hardware.num_envs", "not enough memory"]),
    # --- the memory rule: what the run would hold, estimated before anything is built, against the memory available
    (["train", *TINY, "env.x_size=100000", "env.y_size=100000"], ["not enough memory", "env.x_size x env.y_size = 100,000 x 100,000"]),
    (["train", *TINY, "eval_episodes=1000000000"], ["not enough memory", "eval_episodes=1,000,000,000"]),
    (["train", *TINY, "algo=qmix", "algo.mixing_embed=100000000"], ["not enough memory", "algo.mixing_embed"]),
    (["train", *TINY, "algo.buffer_size=10000000000"], ["not enough memory", "algo.buffer_size"]),
    (["train", *PPO_TINY, "algo.rollout_steps=16", "algo.hidden=[1000000,1000000]"], ["not enough memory", "algo.hidden"]),
    (["train", "algo=mappo", "env=simple_adversary", "env.N=5000", "hardware=cpu", "hardware.env_workers=0", "progress=false"],
     ["not enough memory", "algo.rollout_steps x hardware.num_envs"]),
    (["train", "algo=mfq", "env=ising", "env.L=100000", "hardware=cpu", "progress=false"], ["not enough memory", "env.L=100,000"]),
    (["train", "algo=mfq", "env=battle", "env.map_size=20000", "hardware=cpu", "progress=false"], ["not enough memory", "env.map_size=20,000"]),
    (["eval", R, "episodes=10000000000"], ["not enough memory", "10,000,000,000 copies"]),
    (["train", *TINY, "env.obs_range=999"], ["env.obs_range", "at most 17"]),
    (["train", *TINY, "env.obs_range=4"], ["env.obs_range", "odd"]),
    (["train", *TINY, "env.max_cycles=0"], ["env.max_cycles"]),
    (["train", *TINY, "env.constraint_window=0.01", "env.backend=pettingzoo"], ["env.constraint_window", "at least 0.125"]),
    (["train", *TINY, "env.constraint_window=0"], ["env.constraint_window"]),
    (["train", *TINY, "env.n_evaders=30"], ["env.n_evaders", "room for 10"]),
    (["train", *TINY, "env.n_evaders=30", "env.backend=pettingzoo"], ["env.n_evaders", "room for 10"]),
    (["train", *TINY, "env.n_evaders=20", "env.backend=pettingzoo"], ["env.n_evaders"]),
    (["train", *TINY, "env.n_evaders=100"], ["env.n_evaders"]),
    (["train", *TINY, "env.n_pursuers=100", "env.backend=pettingzoo"], ["env.n_pursuers"]),
    (["train", *TINY, "env.surround=false", "env.n_catch=3"], ["env.n_catch", "env.n_pursuers"]),
    (["train", *TINY, "env.backend=gym"], ["env.backend", "native"]),
    (["train", *TINY, "total_steps=${total_steps}"], ["total_steps", "interpolation"]),
    (["train", *TINY, "total_steps=${foo:bar}"], ["total_steps", "interpolation type foo"]),
    (["train", *TINY, "seed=${oc.env:MARLRUN_TEST_UNSET_VARIABLE}"], ["seed", "MARLRUN_TEST_UNSET_VARIABLE"]),
    (["train", *TINY, "algo.lr=1e-3)"], ["algo.lr=1e-3)", "cannot parse"]),
    (["train", *TINY, "hydra.run.dir=with space ü"], ["hydra.run.dir", "quote it", "'with space ü'"]),
    (["train", *TINY, "hydra.run.dir="], ["hydra.run.dir is empty"]),
    (["train", *TINY, f"hydra.run.dir={R}"], ["already holds a run", "resume="]),
    (["train", *TINY, f"hydra.run.dir={R}/checkpoints"], ["inside the run folder", "RUN"]),
    (["train", *TINY, "hydra.run.dir={root}/a_file/run"], ["cannot write", "a_file"]),
    (["train", *TINY, "algo=nothing"], ["algo/nothing", "super_ddqn"]),
    (["train", "--cfg", "job", "-m"], ["--cfg"]),
    # --- resume: validated exactly as a fresh run, and it cannot change what the run is
    (["train", f"resume={R}", "total_steps=abc"], ["total_steps"]),
    (["train", f"resume={R}", "total_steps=-5"], ["total_steps", ">= 1"]),
    (["train", f"resume={R}", "log_interval=0"], ["log_interval"]),
    (["train", f"resume={R}", "eval_episodes=-3"], ["eval_episodes"]),
    (["train", f"resume={R}", "algo.lr=nan"], ["algo.lr"]),
    (["train", f"resume={R}", "algo.bandwidth=5"], ["algo.bandwidth"]),
    (["train", f"resume={R}", "hardware.device=tpu"], ["hardware.device"]),
    (["train", f"resume={R}", "seed=-1"], ["seed"]),
    (["train", f"resume={R}", "+newkey=1"], ["newkey"]),
    (["train", f"resume={R}", "algo=mfq"], ["algo=mfq", "resumed run keeps its algo"]),
    (["train", f"resume={R}", "env=battle"], ["env=battle"]),
    (["train", f"resume={R}", "hydra.run.dir=elsewhere"], ["hydra.run.dir", "stays in its folder"]),
    (["train", f"resume={R}", "env.n_evaders=2"], ["resume: env.n_evaders was 3 in this run, not 2", "start a new run"]),
    (["train", f"resume={R}", "hardware.num_envs=3"], ["resume: hardware.num_envs was 2"]),
    (["train", f"resume={R}", "total_steps=50"], ["total_steps=50 is below the"]),
    (["train", f"resume={R}", "-m"], ["not a sweep folder", "continue it without -m"]),
    (["train", "resume="], ["needs a run folder"]),
    (["train", "resume={root}/nowhere"], ["nowhere", "does not exist"]),
    (["train", "resume={root}/GARBAGE_CONFIG"], ["GARBAGE_CONFIG"]),
    (["train", "resume={root}/LIST_CONFIG"], ["LIST_CONFIG"]),
    (["train", "resume={root}/PICKLE_CONFIG"], ["env._target_"]),
    (["train", "resume={root}/OPEN_CONFIG"], ["algo._target_"]),
    (["train", "resume={root}/ALIEN_CHECKPOINT", "total_steps=400"], ["not a marlrun checkpoint", "env_steps"]),
    (["train", "resume={root}/GARBAGE_METRICS", "total_steps=400"], ["metrics.jsonl", "line 2", "not a JSON record"]),
    (["train", "resume={root}/STEPLESS_METRICS", "total_steps=400"], ["metrics.jsonl", "line 2", "step"]),
    # --- eval
    (["eval", R, "device=tpu"], ["device=tpu"]),
    (["eval", R, "seed=-1"], ["seed=-1"]),
    (["eval", R, "seed=99999999999999999999"], ["seed="]),
    (["eval", R, "episodes=0"], ["episodes=0"]),
    (["eval", R, "episodes=many"], ["episodes=many", "integer"]),
    (["eval", R, "checkpoint=999"], ["checkpoint=999", "kept"]),
    (["eval", R, "checkpoint={root}/nowhere.pt"], ["checkpoint=", "no such file"]),
    (["eval", R, "video=/proc/x.gif"], ["cannot write /proc", "video="]),
    (["eval", R, "video=film.avi"], ["video=film.avi", ".gif or .mp4"]),
    (["eval", R, "render=maybe"], ["render=maybe", "true or false"]),
    (["eval", R, "colour=red"], ["unknown eval option 'colour'"]),
    (["eval"], ["one run folder"]),
    (["eval", "{root}/nowhere"], ["nowhere", "not a marlrun run folder"]),
    (["eval", "{root}/GARBAGE_CONFIG"], ["GARBAGE_CONFIG", "config.yaml cannot be read"]),
    (["eval", "{root}/LIST_CONFIG"], ["LIST_CONFIG", "not a mapping"]),
    (["eval", "{root}/PICKLE_CONFIG"], ["env._target_"]),
    (["eval", "{root}/OPEN_CONFIG"], ["algo._target_"]),
    (["eval", "{root}/ALIEN_CHECKPOINT"], ["not a marlrun checkpoint"]),
    (["eval", "{root}/EVAL_IS_A_FILE"], ["cannot write", "EVAL_IS_A_FILE"]),
    # --- your own environment: what cannot be built or cannot work
    (["train", *BYO, "env=pettingzoo", "env.id=not_a_package.env_v0"], ["env.id=not_a_package.env_v0", "there is no module"]),
    (["train", *BYO, "env=pettingzoo", "env.id=pettingzoo.classic.tictactoe_v3"], ["has no parallel_env()"]),
    (["train", *BYO, "env=pettingzoo", "env.kwargs={N: many}"], ["env.kwargs", "failed"]),
    (["train", *BYO, "env=pettingzoo", "env.teams=[a, b]"], ["env.teams", "3 agents"]),
    (["train", *BYO_ANY, "env=pettingzoo", "algo=mfq"], ["algo=mfq needs a neighbourhood", "Algorithms that fit"]),
    (["train", *BYO, "env=vmas", "env.scenario=navigaton"], ["env.scenario", "did you mean navigation"]),
    (["train", *BYO, "env=vmas", "env.kwargs={n_agnets: 2}"], ["env.kwargs", "does not take"]),
    (["train", *BYO_ANY, "env=vmas", "algo=qmix"], ["algo=qmix needs discrete actions"]),
    # --- the other commands
    (["trian"], ["unknown command 'trian'"]),
    (["report", "{root}/nowhere"], ["nowhere"]),
]


@pytest.mark.parametrize("args, needles", CASES, ids=[" ".join(a[:1] + [x for x in a[1:] if x not in TINY])[:80] for a, _ in CASES])
def test_bad_input_is_one_line_and_changes_nothing(workspace, capsys, monkeypatch, args, needles):
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("MARLRUN_TEST_UNSET_VARIABLE", raising=False)
    before = snapshot(workspace)
    code, out, err = call(capsys, *[a.replace("{root}", str(workspace)) for a in args])
    assert code != 0
    assert "Traceback" not in err + out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("marlrun: error:"), err
    for needle in needles:
        assert needle.replace("{root}", str(workspace)) in lines[0], lines[0]
    assert snapshot(workspace) == before  # nothing already on disk changed, and no run folder was left behind




QUIET = ["total_steps=8", "log_interval=4", "eval_episodes=0", "checkpoint_interval=8", "hardware=cpu", "hardware.num_envs=2",
         "hardware.env_workers=0", "progress=false", "print_config=false"]
WARNINGS = [  # a setting that has no effect: one warning line, and the run goes on
    (["env.x_size=8", "env.y_size=8", "env.n_pursuers=2", "env.n_evaders=3", "env.n_catch=2"], None),  # the default: no word
    (["env.x_size=8", "env.y_size=8", "env.n_pursuers=2", "env.n_evaders=3", "env.n_catch=1"], ["env.n_catch=1", "env.surround=true"]),
    (["algo=maddpg", "env=simple_adversary", "algo.continuous_policy=gumbel"], ["algo.continuous_policy=gumbel", "discrete"]),
    (["experiment=mfq_ising", "env.L=8", "algo.opponent=random"], ["algo.opponent=random", "one team"]),
    (["experiment=mfq_ising", "env.L=8", "algo.obs_hidden=32"], ["algo.obs_hidden=32", "vectors"]),
    (["algo=ippo", "env=simple_adversary", "algo.rollout_steps=4", "algo.conv_channels=[4]"], ["algo.conv_channels=[4]", "vectors"]),
    (["experiment=mfq_ising_sweep", "env.L=8", "hydra.sweeper.params.seed=0"], ["sweep", "add -m"]),
]


@pytest.mark.parametrize("overrides, needles", WARNINGS, ids=[" ".join(o)[-60:] for o, _ in WARNINGS])
def test_a_setting_without_effect_is_one_warning_line(tmp_path, capsys, monkeypatch, overrides, needles):
    monkeypatch.chdir(tmp_path)
    code, out, err = call(capsys, "train", *QUIET, *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("marlrun: warning:")]
    if needles is None:
        assert warnings == [], warnings
        return
    assert len(warnings) == 1, err
    for needle in needles:
        assert needle in warnings[0], warnings[0]
