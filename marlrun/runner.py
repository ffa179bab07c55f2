"""The training loop: step environments, hand transitions to the algorithm, update, log, evaluate, checkpoint."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.tree import Tree

from marlrun.algos.base import Algorithm
from marlrun.build import build_run, env_seed, make_env
from marlrun.checkpoint import RESUME_KEYS, RUN_STATE_KEYS, checkpoint_paths, load_checkpoint, remove_stale_temp_files, save_checkpoint
from marlrun.config import parse_duration, validate
from marlrun.console import console, taking_long
from marlrun.envs.vector import EnvWorkerDied
from marlrun.errors import UserError
from marlrun.hardware import resolve_device
from marlrun.loggers import make_loggers
from marlrun.metrics import SUMMARY_FILE, MeanTracker, MetricWriter, write_json
from marlrun.runfolder import quoted


# ---------------------------------------------------------------------------- set-up
def next_multiple(step: int, interval: int) -> int:
    """The first multiple of ``interval`` after ``step``: when the next log, evaluation or checkpoint is due."""
    return (step // interval + 1) * interval


def banner(cfg: DictConfig, hardware: dict) -> str:
    """What runs where, and why ``auto`` chose it: a line for the run, one each for device, precision and threads."""
    return (f"[bold]{cfg.algo.name} on {cfg.env.name}[/], seed {cfg.seed}, {cfg.total_steps:,} env steps\n"
            f"  device: {hardware['device']}\n  precision: {hardware['precision']} ({hardware['precision_why']})\n"
            f"  torch threads: {hardware['torch_threads']} ({hardware['torch_threads_why']})")


def config_tree(cfg: DictConfig) -> Tree:
    tree = Tree("[bold]config")
    for key, value in cfg.items():
        if isinstance(value, DictConfig):
            branch = tree.add(f"[bold cyan]{key}")
            for k, v in value.items():
                branch.add(f"{k}: {v}")
        else:
            tree.add(f"{key}: {value}")
    return tree


TWICE = "Ctrl-C (or SIGTERM) stops the run after it, twice stops it at once"
STARTED_AT = "MARLRUN_STARTED_AT"  # when the `marlrun train` command started (epoch seconds): time_limit counts from it
SAME_SIGNAL_WITHIN_S = 1.0  # a signal this soon after the first is the same one delivered twice (to the process group and forwarded)


def command_started_at() -> float:
    """When this process's ``marlrun train`` command started (a sweep's workers inherit it), else now."""
    try:
        return float(os.environ[STARTED_AT])
    except (KeyError, ValueError):
        return time.time()


class StopSignal:
    """Turns SIGINT, SIGTERM and SIGUSR2 (a cluster scheduler's "time is nearly up", as submitit and SLURM's
    ``--signal`` send it) into a flag the loop checks, so the run can stop with a checkpoint. ``passed_on`` says which
    signal should reach the handler it replaced once the run has stopped (submitit's SIGUSR2: requeue the job)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)

    def __init__(self):
        self.received: str | None = None
        self.previous: dict = {}
        self.at = 0.0

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # a second Ctrl-C: stop at once
            if time.monotonic() - self.at < SAME_SIGNAL_WITHIN_S:
                return
            raise KeyboardInterrupt
        self.received, self.at = signal.Signals(signum).name, time.monotonic()
        console.print(f"marlrun: {self.received}: stopping after this step with a checkpoint; send it again to stop at once",
                      soft_wrap=True, markup=False, highlight=False)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------- evaluation
PER_AGENT_RETURNS_UP_TO = 32  # agents; above this only team and mean returns are logged


def episode_scalars(env, returns: torch.Tensor, lengths: torch.Tensor, info: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-episode scalars of ``n`` finished episodes, name -> [n]: mean and per-agent return (for up to 32 agents),
    length, each team's mean return (when there are several teams), and the environment's game metrics ``info``."""
    spec = env.spec
    out = {"episode_return": returns.mean(1), "episode_length": lengths}
    if spec.n_agents <= PER_AGENT_RETURNS_UP_TO:
        out.update({f"episode_return/{name}": returns[:, i] for i, name in enumerate(spec.agent_names)})
    if len(spec.team_names) > 1:
        out.update({f"team_return/{team}": returns[:, spec.team_members(team)].mean(1) for team in spec.team_names})
    out.update(info)
    return out


class seeded_policy:
    """Within the block, the algorithm's and torch's random numbers come from ``seed``; afterwards both continue as
    if the block had not run. Makes an evaluation with a stochastic policy (or random opponents) repeatable."""

    def __init__(self, algo: Algorithm, seed: int, device: torch.device):
        self.algo, self.seed, self.device = algo, seed, device

    def __enter__(self):
        self.fork = torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])
        self.fork.__enter__()
        torch.manual_seed(self.seed)
        generator = getattr(self.algo, "generator", None)
        self.saved = generator.get_state() if generator is not None else None
        if generator is not None:
            generator.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            self.algo.generator.set_state(self.saved)
        return self.fork.__exit__(*exc)


def evaluate(algo: Algorithm, env, env_steps: int, seed: int = 0, frame=None, probe: dict | None = None) -> dict[str, float]:
    """Play one greedy episode in each copy of ``env`` (reset to its evaluation seed), the policy's random numbers
    drawn from ``seed``; returns the means of ``episode_scalars``. ``frame(env, t, ret)``, if given, is called in every state
    copy 0 acts in (to record an animation of its episode). ``probe``, if given, receives a distributional critic's
    predicted return distribution in each copy's first state and the discounted returns observed from there (where
    the time limit cut an agent's episode, plus the discounted mean the critic predicts at its final observation, as
    its training targets bootstrap there), per team ("teams": [(name, mixture, observed)]), and the scalars get their means (``eval/predicted_return_mean`` and
    ``_std``, ``eval/observed_discounted_return``; with several teams, one each, ``.../<team>``)."""
    obs = env.reset()
    predicted = algo.return_distribution(obs, env.context()) if probe is not None and hasattr(algo, "return_distribution") else None
    discounted = torch.zeros(env.num_envs, env.spec.n_agents, device=obs.device)
    discount = torch.ones(env.num_envs, device=obs.device)
    returns = torch.zeros(env.num_envs, env.spec.n_agents, device=obs.device)
    lengths = torch.zeros(env.num_envs, device=obs.device)
    info: dict[str, torch.Tensor] = {}  # each copy's game metrics, from the step its episode ended
    running = torch.ones(env.num_envs, dtype=torch.bool, device=obs.device)
    with seeded_policy(algo, seed, obs.device):
        while running.any():
            if frame is not None and running[0]:
                frame(env, int(lengths[0]), float(returns[0].mean()))
            step = env.step(algo.act(obs, env_steps, greedy=True, context=env.context()))
            returns += step.reward * running[:, None]
            if predicted is not None:
                discounted += (discount * running)[:, None] * step.reward
                discount *= algo.cfg.gamma
                cut = running & step.episode_end
                if cut.any():  # an episode cut by the time limit goes on in the critic's eyes: add gamma^T E[V(s_T)]
                    final = algo.return_distribution(step.next_obs, {"state": step.next_state} if step.next_state is not None else {})
                    for _, agents, mixture in final:
                        going_on = cut[:, None] & ~step.terminated[:, agents] & step.alive[:, agents]
                        discounted[:, agents] += torch.where(going_on, discount[:, None] * mixture.mean(), 0.0)
            lengths += running
            ended = running & step.episode_end
            for key, value in step.episode_info.items():
                info.setdefault(key, torch.zeros(env.num_envs, device=obs.device))[ended] = value[ended].float()
            running &= ~step.episode_end
            obs = step.obs
    result = {f"eval/{key}": value.float().mean().item() for key, value in episode_scalars(env, returns, lengths, info).items()}
    if predicted is not None:
        probe["teams"] = [(name, mixture, discounted[:, agents]) for name, agents, mixture in predicted]
        for name, mixture, observed in probe["teams"]:
            suffix = f"/{name}" if len(predicted) > 1 else ""
            result.update({f"eval/predicted_return_mean{suffix}": mixture.mean().mean().item(),
                           f"eval/predicted_return_std{suffix}": mixture.std().mean().item(),
                           f"eval/observed_discounted_return{suffix}": observed.mean().item()})
    return result


class RandomPolicy:
    """Every agent picks uniformly at random (a discrete action, or each component of a continuous one within the
    action bounds): the baseline a learned policy's return is read against."""

    def __init__(self, spec, device: torch.device):
        self.spec, self.device = spec, device
        self.generator = torch.Generator(device=device)

    def act(self, obs: torch.Tensor, env_steps: int, greedy: bool = True, context: dict | None = None) -> torch.Tensor:
        E, A = obs.shape[0], self.spec.n_agents
        if self.spec.discrete_actions:
            return torch.randint(self.spec.n_actions, (E, A), generator=self.generator, device=self.device)
        low, high = self.spec.action_bounds
        return low + (high - low) * torch.rand((E, A, self.spec.n_actions), generator=self.generator, device=self.device)


# ---------------------------------------------------------------------------- the loop
def train(cfg: DictConfig, run_dir: str | Path, parallel_jobs: int = 1, started_at: float | None = None) -> dict:
    """Train as ``cfg`` says, writing everything into ``run_dir``; returns the summary.

    ``parallel_jobs``: runs sharing this machine's cores (a joblib multirun), for the default torch thread count.
    ``started_at``: the time ``cfg.time_limit`` counts from (default: when the ``marlrun train`` command started).
    Everything the run holds (environment workers, files, GPU memory) is released when it returns or fails, so a
    launcher may run the next job in the same process.
    """
    run_dir = Path(run_dir)
    cfg = validate(cfg)  # typed by the schemas (a resumed run's saved config too), interpolations resolved

    checkpoint = None
    if cfg.resume:
        paths = checkpoint_paths(run_dir)
        if not paths:
            raise UserError(f"resume: {run_dir} has no checkpoint in {run_dir / 'checkpoints'}; start a new run instead")
        checkpoint = load_checkpoint(paths[-1], map_location=resolve_device(cfg.hardware.device), required=RUN_STATE_KEYS + RESUME_KEYS)
    if checkpoint:
        refuse_unsafe_changes(checkpoint.get("config", {}), cfg, checkpoint["env_steps"])
    resumes = checkpoint["resumes"] + 1 if checkpoint else 0
    remove_stale_temp_files(run_dir)  # this process owns the folder: a temporary file is a dead writer's
    if not checkpoint:
        save_resolved_config(cfg, run_dir)
    loggers = make_loggers(cfg, run_dir)  # each checked now (installed, tracking store usable): one line, before anything is built

    built = build_run(cfg, env_stream=0 if resumes == 0 else 1 + resumes, parallel_jobs=parallel_jobs, eval_copies=cfg.eval_episodes)
    algo, env, device, precision = built.algo, built.env, built.device, built.precision
    if cfg.print_config:
        console.print(banner(cfg, built.hardware), soft_wrap=True)
    run = None
    summary = None
    try:
        if cfg.print_config and not checkpoint:  # once the config is known to make sense
            console.print(config_tree(cfg))
        run = Run(cfg, run_dir, algo, env, device, precision, resumes)
        run.hardware = built.hardware
        run.started_at = command_started_at() if started_at is None else started_at
        if checkpoint:
            run.restore(checkpoint)
        run.open_writer(loggers, resumed=checkpoint is not None)
        summary = run.loop()
        write_json(run_dir / SUMMARY_FILE, summary)
        print_summary(summary)
        if summary["status"] != "finished":
            console.print(f"[yellow]{summary['status']}[/] at env step {summary['env_steps']:,}; continue with: marlrun train resume={quoted(run_dir)}", soft_wrap=True)
        return summary
    except Diverged as exc:
        kept = checkpoint_paths(run_dir)
        where = f"the last finite checkpoint, {kept[-1]}, is kept" if kept else "no checkpoint was written before it"
        write_json(run_dir / SUMMARY_FILE, {"status": f"diverged: {exc.what} at env step {exc.step}", "algo": cfg.algo.name, "env": cfg.env.name,
                                            "seed": cfg.seed, "env_steps": exc.step, "run_dir": str(run_dir.resolve())})
        raise UserError(f"training diverged: {exc.what} at env step {exc.step:,} (finite at step {exc.since:,}); {where}. "
                        "Lower algo.lr or check the reward scale") from None
    finally:
        if run is not None:
            run.close(failed=summary is None)  # the trackers mark a run that ended in an error as failed
        env.close()


class Run:
    """One training run in progress: the learner, its environments, and what the loop keeps between steps (env steps
    so far, episode returns, evaluations, when the next log, evaluation and checkpoint are due). ``loop`` is the
    training loop; each of its phases (act, step, observe and update, count episodes, log and evaluate, checkpoint) is
    a method below it."""

    def __init__(self, cfg: DictConfig, run_dir: Path, algo: Algorithm, env, device: torch.device, precision: str, resumes: int):
        self.cfg, self.run_dir, self.algo, self.env, self.device, self.precision, self.resumes = cfg, run_dir, algo, env, device, precision, resumes
        self.env_steps = 0
        self.tracker, self.recent = MeanTracker(), deque(maxlen=20)  # scalars since the last log; the last 20 episodes' returns
        self.evals: list[dict] = []
        self.wall_before = 0.0  # seconds trained before this process (in earlier runs of a resumed run)
        self.writer: MetricWriter | None = None
        self.eval_env = None  # built at the first evaluation
        self.hardware: dict = {}  # what runs and why (hardware.explain)
        self.ep_return = torch.zeros(env.num_envs, env.spec.n_agents, device=device)
        self.ep_length = torch.zeros(env.num_envs, device=device)
        self.started_at = time.time()  # what time_limit counts from

    def restore(self, checkpoint: dict) -> None:
        try:
            self.algo.load_state_dict(checkpoint["algo"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise UserError(f"resume: the checkpoint in {self.run_dir / 'checkpoints'} does not fit this config "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); resume without changing algo or env keys") from None
        self.env_steps = checkpoint["env_steps"]
        self.tracker.load_state_dict(checkpoint["tracker"])
        self.recent.extend(checkpoint["recent_returns"])
        self.evals = list(checkpoint["evals"])
        self.wall_before = checkpoint["wall_time"]
        torch.set_rng_state(checkpoint["torch_rng"].cpu())  # a checkpoint loaded onto a GPU moved it there
        console.print(f"[bold]resuming[/] {self.run_dir} from env step {self.env_steps:,}")

    def open_writer(self, loggers: list, resumed: bool) -> None:
        self.writer = MetricWriter(self.run_dir, resume_step=self.env_steps if resumed else None, loggers=loggers)
        if self.writer.tb is not None:  # what ran and why, beside the scalars (TensorBoard's text tab)
            self.writer.tb.add_text("run/hardware", "\n\n".join(f"**{k}**: {v}" for k, v in self.hardware.items()), self.env_steps)

    def close(self, failed: bool) -> None:
        if self.writer is not None:
            self.writer.close(failed=failed)
        if self.eval_env is not None:
            self.eval_env.close()

    def loop(self) -> dict:
        """Train from ``env_steps`` to ``cfg.total_steps`` or a stop signal; returns the summary (status finished or
        stopped by the signal), with a checkpoint of the last step written."""
        cfg, env, algo = self.cfg, self.env, self.algo
        self.next_log, self.next_ckpt = next_multiple(self.env_steps, cfg.log_interval), next_multiple(self.env_steps, cfg.checkpoint_interval)
        self.next_eval = next_multiple(self.env_steps, cfg.eval_interval) if cfg.eval_interval > 0 else None
        self.finite_at = self.env_steps
        obs = env.reset()
        self.start = time.perf_counter()
        self.interval_start, self.interval_steps, self.interval_updates = self.start, 0, algo.gradient_steps
        stopped = None
        deadline = self.started_at + parse_duration(cfg.time_limit) if cfg.time_limit else None
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(), TextColumn("{task.fields[speed]} steps/s"),
            TextColumn("return {task.fields[ret]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, disable=not (cfg.progress and console.is_terminal), refresh_per_second=4,
        )
        if self.env_steps == 0 and self.next_eval is not None and cfg.eval_episodes > 0:  # the untrained policy, to read the others against
            self.writer.write(0, self.evaluate())
        first_step = taking_long("the first step of training", TWICE)
        with StopSignal() as stop, progress, first_step:
            task = progress.add_task(f"{cfg.algo.name} on {cfg.env.name}", total=cfg.total_steps, completed=self.env_steps, speed="-", ret="-")
            unobserved = None  # the last step's transitions, handed to the algorithm while the next step runs
            while self.env_steps < cfg.total_steps:
                context = env.context()
                actions = algo.act(obs, self.env_steps, context=context)
                env.step_async(actions)  # environment workers step while this process observes and learns
                if unobserved:
                    self.tracker.add(algo.observe(*unobserved))
                self.tracker.add(algo.update(self.env_steps))
                if algo.pending_files:
                    for name, data in algo.take_files().items():
                        write_json(self.run_dir / name, data)
                step = self.step_wait(unobserved)
                unobserved = (obs, actions, step, context)
                obs = step.obs
                self.env_steps += env.num_envs
                self.interval_steps += env.num_envs
                self.count_episodes(step)
                first_step.done()  # its notice, if it has not come, will not

                finished = self.env_steps >= cfg.total_steps
                if deadline is not None and not stop.received and time.time() >= deadline:
                    stop.received = "time_limit"  # this step is observed, logged and checkpointed as a signal's is
                if finished or stop.received or self.env_steps >= min(self.next_log, self.next_ckpt):
                    self.tracker.add(algo.observe(*unobserved))  # so logs and checkpoints see every step
                    unobserved = None
                if self.env_steps >= self.next_log or finished:
                    speed = self.log(finished)
                    progress.update(task, speed=f"{speed:,.0f}")
                    if cfg.progress and not console.is_terminal:  # a file or a pipe: a plain line per log, not a bar
                        console.print(self.progress_line(speed), soft_wrap=True, markup=False, highlight=False)
                if self.env_steps >= self.next_ckpt:
                    self.check_finite()
                    self.save_checkpoint()
                    self.next_ckpt = next_multiple(self.env_steps, cfg.checkpoint_interval)
                progress.update(task, completed=self.env_steps, ret=f"{self.recent[-1]:.2f}" if self.recent else "-")
                if stop.received:
                    stopped = stop.received
                    break

            wall = self.wall()
            self.check_finite()
            self.save_checkpoint(wall)
        random_return = None
        if self.eval_env is not None and not stopped:  # once per run, on the evaluation's own episodes
            random_return = evaluate(RandomPolicy(env.spec, self.device), self.eval_env, self.env_steps,
                                     seed=env_seed(cfg.seed, 1))["eval/episode_return"]
        return {
            "status": f"stopped by {stopped}" if stopped else "finished",
            "algo": cfg.algo.name, "env": cfg.env.name, "seed": cfg.seed,
            "device": str(self.device), "precision": self.precision, "torch_threads": torch.get_num_threads(), "hardware": self.hardware,
            "env_steps": self.env_steps, "total_steps": cfg.total_steps, "wall_time_s": round(wall, 2),
            "steps_per_sec": round(self.env_steps / wall, 1) if wall > 0 else None,
            "final_train_return": float(np.mean(list(self.recent))) if self.recent else None,
            "final_eval_return": self.evals[-1]["eval/episode_return"] if self.evals else None,
            "best_eval_return": max(e["eval/episode_return"] for e in self.evals) if self.evals else None,
            "random_eval_return": random_return,
            "evaluations": self.evals, "run_dir": str(self.run_dir.resolve()),
        }

    def progress_line(self, speed: float) -> str:
        ret = f"{self.recent[-1]:.2f}" if self.recent else "-"
        elapsed = time.perf_counter() - self.start
        return (f"{self.cfg.algo.name} on {self.cfg.env.name}: step {self.env_steps:,}/{self.cfg.total_steps:,}, {speed:,.0f} steps/s, "
                f"return {ret}, {elapsed:,.0f} s")

    def wall(self) -> float:
        """Seconds trained, over this process and the ones it resumed."""
        return self.wall_before + time.perf_counter() - self.start

    def step_wait(self, unobserved):
        """The environments' step; a dead environment worker saves the learner (with the step before) and stops the run."""
        try:
            return self.env.step_wait()
        except EnvWorkerDied as exc:
            if unobserved:
                self.algo.observe(*unobserved)
            self.save_checkpoint()
            raise UserError(f"{exc}; the learner was saved at env step {self.env_steps:,}: continue with marlrun train resume={quoted(self.run_dir)}") from None

    def count_episodes(self, step) -> None:
        """Add the step's rewards to the running episodes; record the ones that ended."""
        self.ep_return += step.reward
        self.ep_length += 1
        if step.episode_end.any():
            done = step.episode_end
            info = {key: value[done] for key, value in step.episode_info.items()}
            episodes = {f"train/{k}": v.tolist() for k, v in episode_scalars(self.env, self.ep_return[done], self.ep_length[done], info).items()}
            for i in range(int(done.sum())):
                self.tracker.add({key: values[i] for key, values in episodes.items()})
                self.recent.append(episodes["train/episode_return"][i])
            self.ep_return[done] = 0.0
            self.ep_length[done] = 0.0

    def log(self, finished: bool) -> float:
        """Write the scalars since the last log (with an evaluation when one is due or the run has finished); returns
        the env steps per second since the last log."""
        cfg, algo = self.cfg, self.algo
        now = time.perf_counter()
        scalars = self.tracker.pop()
        scalars.update(algo.schedule(self.env_steps))
        scalars.update({f"env/{key}": value for key, value in self.env.state_metrics().items()})
        scalars["perf/steps_per_sec"] = self.interval_steps / (now - self.interval_start)
        scalars["perf/updates_per_sec"] = (algo.gradient_steps - self.interval_updates) / (now - self.interval_start)
        periodic = self.next_eval is not None and self.env_steps >= self.next_eval
        if cfg.eval_episodes > 0 and (periodic or finished):
            scalars.update(self.evaluate())
            if periodic:
                self.next_eval = next_multiple(self.env_steps, cfg.eval_interval)
        self.writer.write(self.env_steps, scalars)
        self.check_finite(scalars)
        self.next_log = next_multiple(self.env_steps, cfg.log_interval)
        self.interval_start, self.interval_steps, self.interval_updates = time.perf_counter(), 0, algo.gradient_steps
        return scalars["perf/steps_per_sec"]

    def evaluate(self) -> dict[str, float]:
        if self.eval_env is None:
            self.eval_env = make_env(self.cfg, self.cfg.eval_episodes, env_seed(self.cfg.seed, 1), self.device)
            self.eval_env.provide_state = self.algo.uses_state  # a central critic's input, for its predicted returns
        probe: dict = {}
        with taking_long(f"evaluating {self.cfg.eval_episodes:,} episodes at env step {self.env_steps:,}", TWICE):
            result = evaluate(self.algo, self.eval_env, self.env_steps, seed=env_seed(self.cfg.seed, 1), probe=probe)
        if probe:
            self.draw_return_distribution(probe)
        self.evals.append({"step": self.env_steps, **result})
        return result

    def draw_return_distribution(self, probe: dict) -> None:
        """A distributional critic's prediction against the observed returns: a PNG in the run folder and a
        TensorBoard image."""
        from marlrun import return_plot

        image = return_plot.draw(probe["teams"], return_plot.title(self.cfg, self.env_steps, self.cfg.eval_episodes))
        return_plot.save(image, self.run_dir / return_plot.FOLDER, f"step_{self.env_steps:09d}.png")
        if self.writer is not None and self.writer.tb is not None:
            self.writer.tb.add_image("eval/return_distribution", image, self.env_steps, dataformats="HWC")

    def check_finite(self, scalars: dict | None = None) -> None:
        """Stop before a loss or parameter that is inf or nan reaches a checkpoint (the logs keep the values)."""
        what = (non_finite_scalar(scalars) if scalars else None) or non_finite_state(self.algo)
        if what:
            raise Diverged(what, self.env_steps, self.finite_at)
        self.finite_at = self.env_steps

    def save_checkpoint(self, wall: float | None = None) -> None:
        state = {
            "algo": self.algo.state_dict(include_replay=self.cfg.save_replay),
            "env_steps": self.env_steps,
            "tracker": self.tracker.state_dict(), "recent_returns": list(self.recent), "evals": self.evals,
            "wall_time": self.wall() if wall is None else wall, "resumes": self.resumes, "torch_rng": torch.get_rng_state(),
            "torch_threads": torch.get_num_threads(),  # so that `marlrun eval` computes with the same threads
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        save_checkpoint(self.run_dir, self.env_steps, state, self.cfg.keep_checkpoints)

# ---------------------------------------------------------------------------- faults
class Diverged(Exception):
    """A loss or a parameter became inf or nan: the run stops without writing the bad state."""

    def __init__(self, what: str, step: int, since: int):
        super().__init__(what)
        self.what, self.step, self.since = what, step, since


def non_finite_scalar(scalars: dict[str, float]) -> str | None:
    """``'train/loss is nan'`` for the first logged training scalar that is not finite."""
    for key, value in scalars.items():
        if key.startswith("train/") and not np.isfinite(value):
            return f"{key} is {value}"
    return None


def non_finite_state(algo: Algorithm) -> str | None:
    """``'the parameter q.heads.weight holds nan'`` for the first network parameter or optimizer state tensor of the
    learner (its attributes, and those of the teams or other objects it keeps in lists) holding inf or nan."""
    def tensors(obj, name, depth=0):
        if isinstance(obj, torch.nn.Module):
            for key, t in (*obj.named_parameters(), *obj.named_buffers()):
                yield f"parameter {name}.{key}", t
        elif isinstance(obj, torch.optim.Optimizer):
            for i, per_param in enumerate(obj.state.values()):
                for key, t in per_param.items():
                    yield f"optimizer state {name}.{i}.{key}", t
        elif depth < 2 and isinstance(obj, (list, tuple)):
            for i, item in enumerate(obj):
                yield from tensors(item, f"{name}.{i}", depth + 1)
        elif depth < 2 and hasattr(obj, "__dataclass_fields__"):
            for key in obj.__dataclass_fields__:
                yield from tensors(getattr(obj, key), f"{name}.{getattr(obj, 'name', '')}.{key}".replace("..", "."), depth + 1)

    seen = set()
    for attr, value in vars(algo).items():
        for what, t in tensors(value, attr):
            if id(t) in seen or not isinstance(t, torch.Tensor) or not t.is_floating_point():
                continue
            seen.add(id(t))
            if not bool(torch.isfinite(t).all()):
                return f"the {what} holds {'nan' if bool(t.isnan().any()) else 'inf'}"
    return None


# what a resume may change: how long the run goes on, what it logs, evaluates and keeps, where its scalars go, and how
# the machine steps it (threads and worker processes change no number). Everything else makes it another experiment.
RESUMABLE = ("total_steps", "log_interval", "eval_interval", "checkpoint_interval", "keep_checkpoints", "save_replay", "progress",
             "print_config", "loggers", "objective", "time_limit", "resume", "hardware.torch_threads", "hardware.env_workers")


def flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def refuse_unsafe_changes(saved: dict, cfg: DictConfig, env_steps: int) -> None:
    """A resume continues the run its checkpoint holds: a UserError naming the first key whose value differs from the
    checkpoint's config (keys the checkpoint predates, and an older run's ``_target_``, are not compared) unless
    RESUMABLE lists it, and for a ``total_steps`` below the steps already run."""
    before, now = flat(saved), flat(OmegaConf.to_container(cfg, resolve=True))
    for key in sorted(set(before) & set(now)):
        if before[key] != now[key] and not key.endswith("._target_") and not any(key == k or key.startswith(f"{k}.") for k in RESUMABLE):
            raise UserError(f"resume: {key} was {before[key]} in this run, not {now[key]}; a resumed run may change only "
                            f"{', '.join(k for k in RESUMABLE if k != 'resume')} (start a new run to change {key})")
    if cfg.total_steps < env_steps:
        raise UserError(f"resume: total_steps={cfg.total_steps} is below the {env_steps:,} env steps this run has made; "
                        f"give a larger total_steps (or none, to finish the run's own {before.get('total_steps', env_steps):,})")


def save_resolved_config(cfg: DictConfig, run_dir: Path) -> None:
    """``.hydra/config.yaml`` holds the values that ran (Hydra saves interpolations such as ``${now:...}`` or
    ``${oc.env:...}`` unresolved, which a later resume or eval could not reproduce)."""
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.parent.is_dir():
        tmp = saved.with_name(".config.yaml.tmp")
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        os.replace(tmp, saved)


def print_summary(summary: dict) -> None:
    table = Table(title=f"{summary['algo']} on {summary['env']} (seed {summary['seed']}): {summary['status']}")
    table.add_column("metric")
    table.add_column("value", justify="right", overflow="fold")

    def fmt(value):
        return "-" if value is None else f"{value:,.3f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)

    for key in ("env_steps", "wall_time_s", "steps_per_sec", "final_train_return", "final_eval_return", "best_eval_return",
                "random_eval_return"):
        table.add_row(key, fmt(summary.get(key)))
    last_eval = summary["evaluations"][-1] if summary["evaluations"] else {}
    for key, value in last_eval.items():  # teams and game scores of the final evaluation
        if key.startswith(("eval/team_return/", "eval/game/")):
            table.add_row(f"final {key}", fmt(value))
    console.print(table)
    console.print(f"run folder: {summary['run_dir']}", soft_wrap=True, markup=False, highlight=False)  # whole, never folded
