"""Run BenchMARL (MAPPO, IPPO or MADDPG) on a task marlrun also runs, and write the result as a marlrun run folder.

The comparison baseline of docs/results/byo_env: BenchMARL with its own default hyperparameters (its YAMLs), on the
same task with the same episode length, env-step budget and seed list as marlrun's side. It runs in its own virtual
environment, never marlrun's (BenchMARL pins torchrl and tensordict, and torchrl pins torch):

    python3.11 -m venv /tmp/bm && /tmp/bm/bin/pip install torch==2.13.0 benchmarl==1.5.2 vmas==1.5.2 mpe2 pyyaml
    /tmp/bm/bin/python scripts/benchmarl_baseline.py --task simple_spread --seed 0 --frames 300000 --out runs/bm/0

The folder it writes holds what `marlrun report` reads: ``.hydra/config.yaml`` (framework, algo.name, env.name,
seed, total_steps), ``metrics.jsonl`` (``eval/episode_return`` at each evaluation: the mean over agents of each agent's
summed reward, averaged over the evaluation episodes, BenchMARL's ``eval/reward/episode_reward_mean``, which is how
marlrun defines its own) and ``summary.json`` (env steps per second over the whole run, evaluation included).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch
import yaml

ALGORITHMS = ("mappo", "ippo", "maddpg")


def patch_pettingzoo_mpe() -> None:
    """torchrl finds PettingZoo tasks by name in ``pettingzoo.mpe``, which moved to the mpe2 package in PettingZoo
    1.25: point its lookup at mpe2."""
    import torchrl.envs.libs.pettingzoo as tpz
    from mpe2.all_modules import mpe_environments

    tpz._load_available_envs = lambda: dict(mpe_environments)


def task_of(name: str, max_steps: int):
    from benchmarl.environments import PettingZooTask, VmasTask

    if name.startswith("vmas/"):
        task = VmasTask[name.removeprefix("vmas/").upper()].get_from_yaml()
        task.config["max_steps"] = max_steps
        return task, True
    patch_pettingzoo_mpe()
    task = PettingZooTask[name.upper()].get_from_yaml()
    task.config["max_cycles"] = max_steps
    return task, False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True, help="simple_spread (PettingZoo's, from mpe2) or vmas/<scenario>")
    p.add_argument("--algo", default="mappo", choices=ALGORITHMS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, required=True, help="env steps (BenchMARL's frames: one per copy per step)")
    p.add_argument("--max-steps", type=int, default=None, help="episode length (default: 25 for simple_spread, 100 for VMAS)")
    p.add_argument("--continuous", action="store_true", help="continuous actions (default: discrete for PettingZoo, continuous for VMAS)")
    p.add_argument("--eval-every", type=int, default=30_000, help="env steps between evaluations (a multiple of 6000)")
    p.add_argument("--eval-episodes", type=int, default=32)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)

    from benchmarl.algorithms import IppoConfig, MaddpgConfig, MappoConfig
    from benchmarl.experiment import Experiment, ExperimentConfig
    from benchmarl.models.mlp import MlpConfig

    vmas = args.task.startswith("vmas/")
    max_steps = args.max_steps or (100 if vmas else 25)
    task, _ = task_of(args.task, max_steps)
    algorithm = {"mappo": MappoConfig, "ippo": IppoConfig, "maddpg": MaddpgConfig}[args.algo].get_from_yaml()
    config = ExperimentConfig.get_from_yaml()
    config.max_n_frames = args.frames
    config.prefer_continuous_actions = vmas or args.continuous
    config.loggers = ["csv"]
    config.create_json = False
    config.render = False
    config.evaluation_interval = args.eval_every
    config.evaluation_episodes = args.eval_episodes
    config.checkpoint_interval = 0
    config.checkpoint_at_end = False
    args.out.mkdir(parents=True, exist_ok=True)
    config.save_folder = str(args.out)

    experiment = Experiment(task=task, algorithm_config=algorithm, model_config=MlpConfig.get_from_yaml(),
                            critic_model_config=MlpConfig.get_from_yaml(), seed=args.seed, config=config)
    start = time.perf_counter()
    experiment.run()
    wall = time.perf_counter() - start

    def read(name: str) -> list[tuple[int, float]]:  # torchrl's CSV logger: "iteration,value" rows
        with open(next(args.out.rglob(name))) as f:
            return [(int(float(row[0])), float(row[1])) for row in csv.reader(f)]

    frames = dict(read("counters_total_frames.csv"))  # iteration -> env steps after it (evaluations follow training)
    records = [{"step": int(frames[i]), "eval/episode_return": value} for i, value in read("eval_reward_episode_reward_mean.csv")]
    env = args.task.removeprefix("vmas/")
    cfg = {"framework": "benchmarl", "seed": args.seed, "total_steps": args.frames,
           "algo": {"name": args.algo}, "env": {"name": env, "max_steps": max_steps, "continuous_actions": config.prefer_continuous_actions},
           "task": dict(task.config)}
    (args.out / ".hydra").mkdir(exist_ok=True)
    (args.out / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with open(args.out / "metrics.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    summary = {"status": "finished", "framework": "benchmarl", "algo": args.algo, "env": env, "seed": args.seed,
               "env_steps": args.frames, "total_steps": args.frames, "wall_time_s": round(wall, 2),
               "steps_per_sec": round(args.frames / wall, 1), "final_eval_return": records[-1]["eval/episode_return"],
               "evaluations": records}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{args.task} {args.algo} seed {args.seed}: final eval return {records[-1]['eval/episode_return']:.3f}, "
          f"{args.frames / wall:.0f} env steps/s")


if __name__ == "__main__":
    main()
