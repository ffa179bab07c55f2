"""Raw pursuit throughput beside SUPER-DDQN training throughput, same environment copies and workers.

    python scripts/bench_pursuit.py [hydra overrides ...] [--seconds 30] [--train-steps 4000] [--json out.json]

1. raw: the configured number of pursuit copies in the configured number of
   worker processes, stepped with random actions for --seconds;
2. train: `marlrun train` with the same config for --train-steps env steps past
   ``learning_starts`` (so every measured step includes learning), read back from
   the run's own perf/steps_per_sec records.

Both run in this one process, one after the other, so the ratio is measured
side by side on the same machine state. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from rich.console import Console
from rich.table import Table

from marlrun.config import register_configs
from marlrun.metrics import read_metrics
from marlrun.runner import make_env, torch_threads, train


def raw_throughput(cfg, seconds: float) -> float:
    env = make_env(cfg, cfg.hardware.num_envs, cfg.seed, torch.device("cpu"))
    try:
        env.reset()
        gen = torch.Generator().manual_seed(0)
        shape = (env.num_envs, env.spec.n_agents)
        for _ in range(5):  # warm up the workers
            env.step(torch.randint(0, env.spec.n_actions, shape, generator=gen))
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            env.step(torch.randint(0, env.spec.n_actions, shape, generator=gen))
            steps += env.num_envs
        return steps / (time.perf_counter() - start)
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="hydra overrides, as for `marlrun train`")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to step the raw environment")
    parser.add_argument("--train-steps", type=int, default=4000, help="env steps of training measured after learning starts")
    parser.add_argument("--json", type=Path, default=Path("outputs/bench/pursuit.json"), help="where to write the figures")
    args = parser.parse_args()

    register_configs()
    with initialize_config_module("marlrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    torch.set_num_threads(torch_threads(cfg.hardware))
    raw = raw_throughput(cfg, args.seconds)

    log = 1000
    warm = -(-cfg.algo.learning_starts // log) * log + log  # first full log interval with learning in it
    with tempfile.TemporaryDirectory() as run_dir:
        with initialize_config_module("marlrun.conf", version_base="1.3"):
            train_cfg = compose("config", overrides=[*args.overrides, f"total_steps={warm + args.train_steps}", f"log_interval={log}",
                                                     "eval_episodes=0", "progress=false", "print_config=false", "save_replay=false",
                                                     f"checkpoint_interval={10**9}"])
        train(train_cfg, run_dir)
        records = [r for r in read_metrics(run_dir) if r["step"] > warm and "perf/steps_per_sec" in r]
    steps_per_sec = sum(r["perf/steps_per_sec"] for r in records) / len(records)
    updates_per_sec = sum(r["perf/updates_per_sec"] for r in records) / len(records)

    result = {
        "env": cfg.env.name, "algo": cfg.algo.name, "overrides": args.overrides,
        "num_envs": cfg.hardware.num_envs, "env_workers": cfg.hardware.env_workers, "device": cfg.hardware.device,
        "raw_env_steps_per_sec": round(raw, 1), "train_env_steps_per_sec": round(steps_per_sec, 1),
        "train_agent_steps_per_sec": round(steps_per_sec * cfg.env.n_pursuers, 1),
        "train_updates_per_sec": round(updates_per_sec, 1), "train_over_raw": round(steps_per_sec / raw, 3),
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
    }
    table = Table(title=f"pursuit throughput ({cfg.hardware.num_envs} copies, {cfg.hardware.env_workers} worker(s))")
    for column in ("raw env steps/s", "train env steps/s", "train agent-steps/s", "updates/s", "train / raw"):
        table.add_column(column, justify="right")
    table.add_row(f"{raw:,.0f}", f"{steps_per_sec:,.0f}", f"{result['train_agent_steps_per_sec']:,.0f}", f"{updates_per_sec:,.1f}", f"{result['train_over_raw']:.0%}")
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
