"""Raw environment throughput beside training throughput, for each algorithm and environment pair.

    python scripts/bench.py [hydra overrides ...] [--case NAME ...] [--seconds 20] [--train-steps N] [--json out.json]

Cases (all by default): super_ddqn-pursuit, maddpg-simple_adversary (with its copies in a worker process, and
in the main process as experiment=maddpg_adversary runs it), maddpg-pursuit, mfq-battle (experiment=mfq_battle:
64 MF-Q agents against 64 random ones), mfq-ising-256 (16 lattices of 256x256, a million spins per step).
Extra hydra overrides apply to every case. For each case, in this one process, one after the other:

1. raw: the configured number of environment copies in the configured number of
   worker processes, stepped with random actions for --seconds;
2. act: the same, with the untrained algorithm choosing every action (no learning), for --seconds;
3. train: `marlrun train` with the same config for --train-steps env steps past
   the algorithm's ``learning_starts`` (so every measured step includes learning),
   read back from the run's own perf/steps_per_sec records.

Both run side by side on the same machine state, so their ratio is the figure to
compare. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from rich.console import Console
from rich.table import Table

from marlrun.config import register_configs
from marlrun.metrics import read_metrics
from marlrun.runner import make_env, torch_threads, train

CASES = {  # name: (overrides, default env steps of training to measure, env steps per log record)
    "super_ddqn-pursuit": (["algo=super_ddqn", "env=pursuit"], 4000, 1000),
    "maddpg-simple_adversary": (["algo=maddpg", "env=simple_adversary"], 20000, 1000),
    "maddpg-simple_adversary-inprocess": (["algo=maddpg", "env=simple_adversary", "hardware.env_workers=0"], 20000, 1000),
    "maddpg-pursuit": (["algo=maddpg", "env=pursuit", "algo.learning_starts=2000", "algo.buffer_size=100000"], 4000, 1000),
    "mfq-battle": (["experiment=mfq_battle"], 2000, 500),
    "mfq-ising-256": (["experiment=mfq_ising", "env.L=256", "hardware.num_envs=16", "algo.learning_starts=0"], 64, 16),
}


def compose_config(overrides: list[str]):
    with initialize_config_module("marlrun.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def random_actions(spec, num_envs: int, gen: torch.Generator) -> torch.Tensor:
    if spec.discrete_actions:
        return torch.randint(0, spec.n_actions, (num_envs, spec.n_agents), generator=gen)
    low, high = spec.action_bounds
    return low + (high - low) * torch.rand(num_envs, spec.n_agents, spec.n_actions, generator=gen)


def raw_throughput(cfg, seconds: float) -> tuple[float, int]:
    """Env steps per second with random actions, and the number of agents."""
    env = make_env(cfg, cfg.hardware.num_envs, cfg.seed, torch.device("cpu"))
    try:
        env.reset()
        gen = torch.Generator().manual_seed(0)
        for _ in range(5):  # warm up the workers
            env.step(random_actions(env.spec, env.num_envs, gen))
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            env.step(random_actions(env.spec, env.num_envs, gen))
            steps += env.num_envs
        return steps / (time.perf_counter() - start), env.spec.n_agents
    finally:
        env.close()


def act_throughput(cfg, seconds: float) -> float:
    """Env steps per second with the algorithm (untrained) choosing every action: acting without learning."""
    device = torch.device("cpu")
    env = make_env(cfg, cfg.hardware.num_envs, cfg.seed, device)
    try:
        algo = instantiate(cfg.algo, _partial_=True, _convert_="all")(spec=env.spec, num_envs=env.num_envs, device=device, seed=cfg.seed)
        obs = env.reset()
        for _ in range(2):  # warm up
            obs = env.step(algo.act(obs, 0, greedy=True, context=env.context())).obs
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            obs = env.step(algo.act(obs, 0, greedy=True, context=env.context())).obs
            steps += env.num_envs
        return steps / (time.perf_counter() - start)
    finally:
        env.close()


def train_throughput(overrides: list[str], learning_starts: int, train_steps: int, log: int) -> tuple[float, float]:
    """Env steps and update rounds per second of `marlrun train`, over log intervals that all include learning."""
    warm = -(-learning_starts // log) * log + log  # first full log interval with learning in it
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_config([*overrides, f"total_steps={warm + train_steps}", f"log_interval={log}", "eval_episodes=0",
                              "progress=false", "print_config=false", "save_replay=false", f"checkpoint_interval={10**9}"])
        train(cfg, run_dir)
        records = [r for r in read_metrics(run_dir) if r["step"] > warm and "perf/steps_per_sec" in r]
    return (sum(r["perf/steps_per_sec"] for r in records) / len(records),
            sum(r["perf/updates_per_sec"] for r in records) / len(records))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="hydra overrides for every case, as for `marlrun train`")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="cases to run (repeatable; default: all)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to step each raw environment")
    parser.add_argument("--train-steps", type=int, default=None, help="env steps of training measured after learning starts")
    parser.add_argument("--json", type=Path, default=Path("outputs/bench/bench.json"), help="where to write the figures")
    args = parser.parse_args()
    register_configs()

    results = []
    for name in args.case or list(CASES):
        case_overrides, default_steps, log = CASES[name]
        overrides = [*case_overrides, *args.overrides]
        cfg = compose_config(overrides)
        torch.set_num_threads(torch_threads(cfg.hardware))
        raw, n_agents = raw_throughput(cfg, args.seconds)
        act = act_throughput(cfg, args.seconds)
        steps_per_sec, updates_per_sec = train_throughput(overrides, cfg.algo.learning_starts, args.train_steps or default_steps, log)
        results.append({
            "case": name, "overrides": overrides, "algo": cfg.algo.name, "env": cfg.env.name, "agents": n_agents,
            "num_envs": cfg.hardware.num_envs, "env_workers": cfg.hardware.env_workers, "device": cfg.hardware.device,
            "torch_threads": torch.get_num_threads(),
            "raw_env_steps_per_sec": round(raw, 1), "act_env_steps_per_sec": round(act, 1), "act_agent_steps_per_sec": round(act * n_agents, 1),
            "train_env_steps_per_sec": round(steps_per_sec, 1), "train_agent_steps_per_sec": round(steps_per_sec * n_agents, 1),
            "train_updates_per_sec": round(updates_per_sec, 1), "train_over_raw": round(steps_per_sec / raw, 3),
        })

    table = Table(title="raw environment, acting and training throughput (env steps/s summed over copies)")
    for column in ("case", "copies/workers/threads", "agents", "raw env steps/s", "act env steps/s", "act agent-steps/s",
                   "train env steps/s", "train agent-steps/s", "updates/s", "train / raw"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r["case"], f"{r['num_envs']}/{r['env_workers']}/{r['torch_threads']}", f"{r['agents']:,}", f"{r['raw_env_steps_per_sec']:,.0f}",
                      f"{r['act_env_steps_per_sec']:,.0f}", f"{r['act_agent_steps_per_sec']:,.0f}", f"{r['train_env_steps_per_sec']:,.0f}",
                      f"{r['train_agent_steps_per_sec']:,.0f}", f"{r['train_updates_per_sec']:,.1f}", f"{r['train_over_raw']:.0%}")
    Console(width=160).print(table)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
