"""`marlrun bench`: raw environment, acting and training throughput and peak memory, per algorithm and environment.

    marlrun bench [hydra overrides ...] [--case NAME ...] [--seconds 20] [--train-steps N] [--json out.json]

Each case runs in a fresh process of its own (so its peak memory is its own), one after the other, on the
configured device. For each case:

1. raw: the configured number of environment copies (in the configured worker processes), stepped with random
   actions for --seconds;
2. act: the same, with the untrained algorithm choosing every action (no learning), for --seconds;
3. train: `marlrun train` with the same config for --train-steps env steps past the algorithm's ``learning_starts``
   (so every measured step includes learning), read back from the run's own perf/steps_per_sec records;
4. memory: the process's peak resident memory, and the peak CUDA memory allocated when the device is a GPU.

Raw-only cases (``*-raw``) skip acting and training. The learner case (``super_ddqn-update``) times the paper's
8-agent SUPER-DDQN gradient step alone, in every precision the machine has: ms per update, FLOP per update (torch's
FLOP counter), FLOP/s, and the machine's own peak for that precision, from plain batched matmuls of the update's
own shapes, so that the table shows the learner's fraction of peak, and the same update at batch 1 per agent: its
fixed cost, which no faster arithmetic removes. Cases run side by side on the same machine
state, so ratios between them are the figures to compare. Prints a table and writes JSON (machine, torch version, every figure),
so that two machines or two commits can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module
from rich.console import Console
from rich.table import Table
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from marlrun.build import BuiltRun, build_run
from marlrun.config import register_configs
from marlrun.envs.pettingzoo import constructor
from marlrun.errors import UserError
from marlrun.hardware import PRECISIONS, bf16_supported, compute_dtype, cpu_bf16_units, cpu_model
from marlrun.metrics import read_metrics
from marlrun.runner import train

RESULT = "BENCH_RESULT "  # prefix of the line a child process reports its figures on

SIMPLE_SPREAD = ["env=pettingzoo", "env.id=mpe2.simple_spread_v3", "env.kwargs={N: 3, max_cycles: 25}"]
NAVIGATION = ["env=vmas", "env.scenario=navigation", "env.kwargs={n_agents: 3}"]
LIBRARY_CASES = {"simple_spread-library-raw": ("mpe2.simple_spread_v3", {"N": 3, "max_cycles": 25})}  # the library alone, no marlrun

CASES = {  # name: (overrides, default env steps of training to measure (0: raw only), env steps per log record)
    "pursuit-pettingzoo-raw": (["env=pursuit", "env.backend=pettingzoo", "hardware.num_envs=1", "hardware.env_workers=0"], 0, 0),
    "pursuit-native-1024-raw": (["env=pursuit", "env.backend=native", "hardware.num_envs=1024", "hardware.env_workers=0"], 0, 0),
    "super_ddqn-pursuit": (["algo=super_ddqn", "env=pursuit"], 4000, 1000),
    "super_ddqn-pursuit-fp32": (["algo=super_ddqn", "env=pursuit", "hardware.precision=fp32"], 4000, 1000),
    "super_ddqn-pursuit-pettingzoo": (["algo=super_ddqn", "env=pursuit", "env.backend=pettingzoo"], 4000, 1000),
    "qmix-pursuit": (["algo=qmix", "env=pursuit"], 4000, 1000),
    "vdn-pursuit": (["algo=qmix", "algo.mixer=vdn", "env=pursuit"], 4000, 1000),
    "maddpg-simple_adversary": (["algo=maddpg", "env=simple_adversary"], 20000, 1000),
    "maddpg-simple_adversary-inprocess": (["algo=maddpg", "env=simple_adversary", "hardware.env_workers=0"], 20000, 1000),
    "maddpg-simple_adversary-mixture": (["algo=maddpg", "env=simple_adversary", "hardware.env_workers=0", "algo.critic_distribution=mixture"], 20000, 1000),
    "maddpg-pursuit": (["algo=maddpg", "env=pursuit", "algo.learning_starts=2000", "algo.buffer_size=100000"], 4000, 1000),
    "ippo-pursuit": (["experiment=ppo_pursuit"], 16384, 4096),  # an update every 16 copies x 128 steps
    "mappo-pursuit": (["experiment=ppo_pursuit", "algo=mappo"], 16384, 4096),
    "mappo-simple_adversary": (["experiment=mappo_adversary"], 16000, 4000),
    "mappo-pursuit-gmac": (["experiment=ppo_pursuit", "algo=mappo", "algo.critic_distribution=gmac"], 16384, 4096),  # beside mappo-pursuit
    "mappo-simple_adversary-gmac": (["experiment=mappo_adversary", "algo.critic_distribution=gmac"], 16000, 4000),
    "mappo-battle": (["experiment=mappo_battle"], 2000, 1000),
    "mfq-battle": (["experiment=mfq_battle"], 2000, 500),
    "mfq-battle-fp32": (["experiment=mfq_battle", "hardware.precision=fp32"], 2000, 500),
    "mfq-ising-256": (["experiment=mfq_ising", "env.L=256", "hardware.num_envs=16", "algo.learning_starts=0"], 64, 16),
    # the generic PettingZoo adapter on simple_spread (beside the library stepped by hand: simple_spread-library-raw)
    "simple_spread-pettingzoo-raw": ([*SIMPLE_SPREAD, "hardware.num_envs=1", "hardware.env_workers=0"], 0, 0),
    "simple_spread-pettingzoo-32-raw": ([*SIMPLE_SPREAD, "hardware.num_envs=32", "hardware.env_workers=0"], 0, 0),
    "mappo-simple_spread": (["experiment=mappo_simple_spread"], 16000, 4000),
    # VMAS stepping its copies as tensors on the training device
    "vmas-navigation-1-raw": ([*NAVIGATION, "hardware.num_envs=1"], 0, 0),
    "vmas-navigation-64-raw": ([*NAVIGATION, "hardware.num_envs=64"], 0, 0),
    "vmas-navigation-1024-raw": ([*NAVIGATION, "hardware.num_envs=1024"], 0, 0),
    "mappo-vmas-navigation": (["experiment=mappo_navigation"], 16000, 3200),
}
LEARNER_CASES = {"super_ddqn-update": ["algo=super_ddqn", "env=pursuit"]}  # the paper's network, batch 32 per agent


def compose_config(overrides: list[str]):
    with initialize_config_module("marlrun.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def random_actions(spec, num_envs: int, gen: torch.Generator) -> torch.Tensor:
    if spec.discrete_actions:
        return torch.randint(0, spec.n_actions, (num_envs, spec.n_agents), generator=gen)
    low, high = spec.action_bounds
    return low + (high - low) * torch.rand(num_envs, spec.n_agents, spec.n_actions, generator=gen)


def raw_throughput(built: BuiltRun, seconds: float) -> float:
    """Env steps per second of the run's environment with random actions."""
    env = built.env
    env.reset()
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):  # warm up the workers
        env.step(random_actions(env.spec, env.num_envs, gen))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(random_actions(env.spec, env.num_envs, gen))
        steps += env.num_envs
    if built.device.type == "cuda":
        torch.cuda.synchronize(built.device)
    return steps / (time.perf_counter() - start)


def act_throughput(built: BuiltRun, seconds: float) -> float:
    """Env steps per second with the algorithm (untrained) choosing every action: acting without learning."""
    env, algo = built.env, built.algo
    obs = env.reset()
    for _ in range(2):  # warm up
        obs = env.step(algo.act(obs, 0, greedy=True, context=env.context())).obs
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        obs = env.step(algo.act(obs, 0, greedy=True, context=env.context())).obs
        steps += env.num_envs
    if built.device.type == "cuda":
        torch.cuda.synchronize(built.device)
    return steps / (time.perf_counter() - start)


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


def library_throughput(env_id: str, kwargs: dict, seconds: float) -> float:
    """Env steps per second of a PettingZoo parallel environment stepped by hand with random actions (dicts in, dicts
    out, a reset when every agent is done): what the adapter is measured against."""
    env = constructor(env_id)(**kwargs)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    spaces = {a: env.action_space(a) for a in env.possible_agents}
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, terms, truncs, _ = env.step({a: int(rng.integers(spaces[a].n)) for a in env.agents})
        if all(terms[a] or truncs[a] for a in terms):
            env.reset()
        steps += 1
    return steps / (time.perf_counter() - start)


def measure_case(name: str, extra: list[str], seconds: float, train_steps: int | None) -> dict:
    """Every figure of one case, measured in this process."""
    if name in LEARNER_CASES:
        return measure_learner(name, extra)
    if name in LIBRARY_CASES:
        env_id, kwargs = LIBRARY_CASES[name]
        raw = library_throughput(env_id, kwargs, seconds)
        return {"case": name, "overrides": [], "algo": None, "env": env_id, "agents": kwargs.get("N"), "num_envs": 1, "env_workers": 0,
                "device": "cpu", "precision": "-", "torch_threads": torch.get_num_threads(), "raw_env_steps_per_sec": round(raw, 1),
                "raw_agent_steps_per_sec": round(raw * kwargs.get("N", 1), 1),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    case_overrides, default_steps, log = CASES[name]
    overrides = [*case_overrides, *extra]
    built = build_run(compose_config(overrides), with_algo=bool(default_steps))  # as `marlrun train` builds it
    cfg, device, n_agents = built.cfg, built.device, built.env.spec.n_agents
    try:
        raw = raw_throughput(built, seconds)
        act = act_throughput(built, seconds) if default_steps else None
        workers = built.env.worker_processes
    finally:
        built.close()
    result = {
        "case": name, "overrides": overrides, "algo": cfg.algo.name, "env": cfg.env.name, "agents": n_agents,
        "num_envs": cfg.hardware.num_envs, "env_workers": workers, "device": str(device), "precision": built.precision,
        "torch_threads": torch.get_num_threads(), "raw_env_steps_per_sec": round(raw, 1), "raw_agent_steps_per_sec": round(raw * n_agents, 1),
    }
    if default_steps:
        steps_per_sec, updates_per_sec = train_throughput(overrides, cfg.algo.get("learning_starts", 0), train_steps or default_steps, log)
        result.update({
            "act_env_steps_per_sec": round(act, 1), "act_agent_steps_per_sec": round(act * n_agents, 1),
            "train_env_steps_per_sec": round(steps_per_sec, 1), "train_agent_steps_per_sec": round(steps_per_sec * n_agents, 1),
            "train_updates_per_sec": round(updates_per_sec, 1), "train_over_raw": round(steps_per_sec / raw, 3),
        })
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    if device.type == "cuda":
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


class MatmulShapes(TorchDispatchMode):
    """Records the operand shapes of every batched matmul run inside it (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default):
            a, b = (args[0], args[1]) if func is torch.ops.aten.bmm.default else (args[1], args[2])
            self.shapes.append((tuple(a.shape), tuple(b.shape)))
        return func(*args, **(kwargs or {}))


def best_ms(fn, device: torch.device, repeats: int, rounds: int = 3) -> float:
    """The best of ``rounds`` mean times of ``repeats`` calls, in ms, after a warm-up."""
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - start) / repeats * 1e3)
    return best


def matmul_peak(shapes, dtype: torch.dtype, device: torch.device) -> float:
    """FLOP/s of plain batched matmuls of ``shapes``, back to back: the machine's own peak for this work."""
    gen = torch.Generator(device=device).manual_seed(0)
    pairs = [(torch.randn(a, generator=gen, device=device).to(dtype), torch.randn(b, generator=gen, device=device).to(dtype)) for a, b in shapes]
    flop = sum(2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2] for a, b in pairs)
    ms = best_ms(lambda: [torch.bmm(a, b) for a, b in pairs], device, repeats=20)
    return flop / (ms / 1e3)


def measure_learner(name: str, extra: list[str]) -> dict:
    """The paper's SUPER-DDQN update alone, in each precision the machine has, beside the matmul peak of its shapes."""
    overrides = [*LEARNER_CASES[name], *extra]

    def filled_learner(precision: str, batch_size: int):
        """The learner as training builds it, in ``precision``, minibatches of ``batch_size``, its replay filled."""
        built = build_run(compose_config([*overrides, f"hardware.precision={precision}", "hardware.env_workers=0"]), batch_size=batch_size)
        built.close()
        algo, spec, device = built.algo, built.env.spec, built.device
        gen = torch.Generator(device=device).manual_seed(0)
        n = min(5000, built.cfg.algo.buffer_size)  # a replay of random transitions, n per agent
        agent = torch.arange(spec.n_agents, device=device).repeat_interleave(n)
        obs = torch.randint(0, 3, (len(agent), *spec.obs_shape), generator=gen, device=device).to(spec.obs_storage_dtype)
        actions = torch.randint(0, spec.n_actions, (len(agent),), generator=gen, device=device)
        algo.replay.add(agent, obs, actions, torch.randn(len(agent), generator=gen, device=device), obs, torch.zeros(len(agent), device=device))
        algo.replay_ready = True
        return algo

    reference = filled_learner("fp32", 1)  # the device, the spec and the thread count the learner runs with
    cfg = compose_config(overrides)
    device, spec = reference.device, reference.spec
    result = {"case": name, "overrides": overrides, "algo": cfg.algo.name, "env": cfg.env.name,
              "agents": spec.n_agents, "batch_per_agent": cfg.algo.batch_size, "device": str(device),
              "torch_threads": torch.get_num_threads(), "precisions": {}}

    for precision in [p for p in PRECISIONS if p != "auto" and (p == "fp32" or bf16_supported(device))]:
        # The same update with one sample per agent: what it costs whatever the batch (kernel dispatch, weight casts
        # and packing, the optimizer, replay bookkeeping), against which only the rest can be gained by arithmetic.
        fixed_ms = best_ms(filled_learner(precision, 1).gradient_step, device, repeats=30)
        algo = filled_learner(precision, cfg.algo.batch_size)
        ms = best_ms(algo.gradient_step, device, repeats=30)
        with FlopCounterMode(display=False) as counter:
            algo.gradient_step()
        with MatmulShapes() as recorder:
            algo.gradient_step()
        flop = counter.get_total_flops()
        peak = matmul_peak(recorder.shapes, compute_dtype(precision), device)
        result["precisions"][precision] = {
            "ms_per_update": round(ms, 2), "ms_per_update_batch_1": round(fixed_ms, 2), "gflop_per_update": round(flop / 1e9, 3), "gflop_per_sec": round(flop / ms / 1e6, 1),
            "matmul_peak_gflop_per_sec": round(peak / 1e9, 1), "fraction_of_peak": round(flop / (ms / 1e3) / peak, 3),
        }
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def run_case_in_child(name: str, extra: list[str], seconds: float, train_steps: int | None, timeout: float) -> dict:
    """``measure_case`` in a fresh Python process, so that peak memory belongs to the case alone."""
    command = [sys.executable, "-m", "marlrun.bench", "--child", name, "--seconds", str(seconds), *extra]
    if train_steps:
        command += ["--train-steps", str(train_steps)]
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"bench case {name} did not finish within {timeout:.0f} s (raise --timeout)") from None
    lines = [line for line in child.stdout.splitlines() if line.startswith(RESULT)]
    if child.returncode != 0 or not lines:
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"bench case {name} failed: {last}")
    return json.loads(lines[-1][len(RESULT):])


def fmt(value, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def print_learner_table(results: list[dict]) -> None:
    table = Table(title="one learner update alone, against the machine's matmul peak at the update's own shapes")
    for column in ("case", "device", "threads", "precision", "ms / update", "ms at batch 1", "GFLOP / update", "GFLOP/s",
                   "matmul peak GFLOP/s", "of peak"):
        table.add_column(column, justify="right", no_wrap=column == "case")
    for r in results:
        for precision, f in r["precisions"].items():
            table.add_row(r["case"], r["device"], str(r["torch_threads"]), precision, fmt(f["ms_per_update"], ".2f"),
                          fmt(f["ms_per_update_batch_1"], ".2f"), fmt(f["gflop_per_update"], ".2f"), fmt(f["gflop_per_sec"]), fmt(f["matmul_peak_gflop_per_sec"]),
                          fmt(f["fraction_of_peak"], ".0%"))
    Console(width=200).print(table)


def print_table(results: list[dict]) -> None:
    table = Table(title="raw environment, acting and training throughput, peak memory (env steps/s summed over copies)")
    for column in ("case", "device", "precision", "copies/workers/threads", "agents", "raw env steps/s", "act agent-steps/s",
                   "train env steps/s", "train agent-steps/s", "updates/s", "train / raw", "peak RSS MiB", "peak CUDA MiB"):
        table.add_column(column, justify="right", no_wrap=column == "case")
    for r in results:
        table.add_row(r["case"], r["device"], r["precision"], f"{r['num_envs']}/{r['env_workers']}/{r['torch_threads']}", f"{r['agents']:,}",
                      fmt(r["raw_env_steps_per_sec"]), fmt(r.get("act_agent_steps_per_sec")), fmt(r.get("train_env_steps_per_sec")),
                      fmt(r.get("train_agent_steps_per_sec")), fmt(r.get("train_updates_per_sec"), ",.1f"),
                      fmt(r.get("train_over_raw"), ".0%"), fmt(r["peak_rss_mib"]), fmt(r.get("peak_cuda_mib")))
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="marlrun bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="hydra overrides for every case, as for `marlrun train`")
    parser.add_argument("--case", action="append", help=f"cases to run (repeatable; default: all): {', '.join([*LEARNER_CASES, *LIBRARY_CASES, *CASES])}")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to step each raw environment and each acting policy")
    parser.add_argument("--train-steps", type=int, default=None, help="env steps of training measured after learning starts")
    parser.add_argument("--json", type=Path, default=Path("outputs/bench/bench.json"), help="where to write the figures")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one case may take before it is stopped")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure one case in this process
    args = parser.parse_args(argv)
    register_configs()
    if args.child:
        print(RESULT + json.dumps(measure_case(args.child, args.overrides, args.seconds, args.train_steps)), flush=True)
        return 0
    known = [*LEARNER_CASES, *LIBRARY_CASES, *CASES]
    unknown = [name for name in args.case or [] if name not in known]
    if unknown:
        raise UserError(f"unknown bench case {', '.join(unknown)}; pick from {', '.join(known)}")
    if args.seconds <= 0:
        raise UserError(f"--seconds must be > 0, got {args.seconds}")
    results = []
    for name in args.case or known:
        results.append(run_case_in_child(name, args.overrides, args.seconds, args.train_steps, args.timeout))
        print(f"{name}: done", file=sys.stderr, flush=True)
    learners = [r for r in results if r["case"] in LEARNER_CASES]
    if learners:
        print_learner_table(learners)
    if len(learners) < len(results):
        print_table([r for r in results if r["case"] not in LEARNER_CASES])
    machine = {"cpus": os.cpu_count(), "cpu": cpu_model(), "cpu_bf16_units": list(cpu_bf16_units()), "platform": platform.platform(),
               "python": platform.python_version(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(f"machine: {machine['cpus']} CPUs ({machine['cpu']}; bf16 units: {', '.join(machine['cpu_bf16_units']) or 'none'})"
          + (f", GPU {machine['gpu']}" if machine["gpu"] else ""))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
