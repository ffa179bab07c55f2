"""`marlrun eval RUN_DIR`: play a trained run's greedy policy again, and optionally film one episode.

Loads the run's saved config (``.hydra/config.yaml``) and its newest checkpoint (or a chosen one), plays ``episodes``
greedy episodes exactly as the training-time evaluation does (same environment seeds by default, same metrics), prints
them next to what training logged at that step, and writes them to ``<run>/eval/``. With ``render=true`` it records
the episode of the first copy as a GIF or MP4 and adds it to the run's TensorBoard.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from marlrun.build import build_run, env_seed
from marlrun.checkpoint import checkpoint_paths, checkpoint_step, load_checkpoint
from marlrun.config import MAX_SEED, load_run_config
from marlrun.console import console
from marlrun.errors import UserError
from marlrun.hardware import HardwareConfig, resolve_device
from marlrun.metrics import write_json
from marlrun import return_plot
from marlrun.render import add_animation_to_tensorboard, captioned, write_animation
from marlrun.runner import evaluate

USAGE = """usage: marlrun eval RUN_DIR [key=value ...]

Plays the run's greedy policy from its newest checkpoint and prints the training-time evaluation metrics.

keys:
  checkpoint=PATH|STEP  a checkpoint file, or the env step of one in RUN_DIR/checkpoints (default: the newest)
  episodes=N            episodes, played side by side (default: the run's eval_episodes, or 10)
  seed=N                the run seed whose evaluation stream seeds the episodes (default: the run's seed,
                        which replays the training-time evaluation)
  device=auto|cpu|cuda  where to play (default: the run's hardware.device)
  render=true           record the first episode: RUN_DIR/eval/step_<N>_seed_<S>.gif
  video=PATH            where to write it instead; .gif or .mp4 (mp4 needs `pip install "marlrun[video]"`)
  fps=N                 frames per second of the animation (default 10)
  tensorboard=false     do not add the animation to the run's TensorBoard (added by default with render=true)
"""

KEYS = ("checkpoint", "episodes", "seed", "device", "render", "video", "fps", "tensorboard")


def parse_args(args: list[str]) -> tuple[Path, dict]:
    positional = [a for a in args if "=" not in a]
    if len(positional) != 1:
        raise UserError("marlrun eval takes one run folder and key=value options (`marlrun eval --help`), "
                        f"got {' '.join(positional) or 'no run folder'}")
    options: dict = {}
    for arg in args:
        if "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        if key not in KEYS:
            raise UserError(f"unknown eval option '{key}'; options: {', '.join(KEYS)}")
        options[key] = value
    for key in ("episodes", "seed", "fps"):
        if key in options:
            try:
                options[key] = int(options[key])
            except ValueError:
                raise UserError(f"{key}={options[key]}: expected an integer") from None
            if key != "seed" and options[key] < 1:
                raise UserError(f"{key}={options[key]}: must be at least 1")
    if "seed" in options and not 0 <= options["seed"] <= MAX_SEED:
        raise UserError(f"seed={options['seed']}: must be an integer in [0, 2**63 - 1]")
    if "device" in options:
        try:
            HardwareConfig(device=options["device"])
        except UserError:
            raise UserError(f"device={options['device']}: unknown device; use auto, cpu, cuda or cuda:N") from None
    for key in ("render", "tensorboard"):
        if key in options:
            if options[key].lower() not in ("true", "false"):
                raise UserError(f"{key}={options[key]}: expected true or false")
            options[key] = options[key].lower() == "true"
    if "video" in options:
        if Path(options["video"]).suffix.lower() not in (".gif", ".mp4"):
            raise UserError(f"video={options['video']}: use a .gif or .mp4 path")
        options["render"] = True
    return Path(positional[0]).expanduser().resolve(), options


def writable_folder(folder: Path, option: str) -> None:
    """Fail before playing, not after, when the results cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".marlrun-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write {folder} ({exc.strerror or type(exc).__name__}){option}") from None


def choose_checkpoint(run_dir: Path, which: str | None) -> Path:
    paths = checkpoint_paths(run_dir)
    if which is None:
        if not paths:
            raise UserError(f"{run_dir} has no checkpoint in {run_dir / 'checkpoints'}; the run stopped before writing one")
        return paths[-1]
    if which.isdigit():
        for path in paths:
            if checkpoint_step(path) == int(which):
                return path
        kept = ", ".join(str(checkpoint_step(p)) for p in paths) or "none"
        raise UserError(f"checkpoint={which}: {run_dir} has no checkpoint at env step {which} (kept: {kept})")
    path = Path(which).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint={which}: no such file")
    return path


def evaluate_run(run_dir: Path, options: dict) -> dict:
    """Play the run's policy as ``options`` say; returns {"step", "seed", "metrics", "training", "files"}. The run is
    built as training built it (``build_run``: the same precision, numerics and torch threads), with ``episodes``
    copies of the environment in this process, seeded as training's evaluation was."""
    cfg = load_run_config(run_dir)
    path = choose_checkpoint(run_dir, options.get("checkpoint"))
    state = load_checkpoint(path, map_location=resolve_device(options.get("device", cfg.hardware.device)))
    step = int(state["env_steps"])
    seed = int(options.get("seed", cfg.seed))
    episodes = int(options.get("episodes", cfg.eval_episodes or 10))
    render = bool(options.get("render", False))
    out_dir = run_dir / "eval"
    writable_folder(out_dir, "; the evaluation writes its result there")
    if "video" in options:
        writable_folder(Path(options["video"]).expanduser().absolute().parent, "; choose another video=PATH")

    # the copies step in this process (and can be drawn); torch computes with the threads training used
    built = build_run(cfg, seed=seed, env_copies=episodes, env_stream=1, env_workers=0, device=options.get("device"),
                      threads=state.get("torch_threads"))
    env, algo = built.env, built.algo
    try:
        try:
            algo.load_state_dict(state["algo"], generators=False)  # evaluation reseeds them: a run trained on another device plays here
        except (KeyError, ValueError, RuntimeError) as exc:
            raise UserError(f"{path} does not fit the run's config ({type(exc).__name__}); was .hydra/config.yaml edited?") from None
        frames: list = []
        def record(e, t: int, ret: float) -> None:  # the first copy's state, with the step, time and return so far under it
            frames.append(captioned(e.frame(0), f"{cfg.algo.name} on {cfg.env.name}, step {step:,}: t={t}, return {ret:.2f}", e.legend))

        probe: dict = {}
        metrics = evaluate(algo, env, step, seed=env_seed(seed, 1), frame=record if render else None, probe=probe)
    finally:
        env.close()

    # what training logged at this step, comparable when the episodes are the same ones
    same_episodes = seed == cfg.seed and episodes == cfg.eval_episodes
    training = next((e for e in state.get("evals", []) if e.get("step") == step), None) if same_episodes else None
    name = f"step_{step}_seed_{seed}"
    files = [out_dir / f"{name}.json"]
    if probe:  # a distributional critic: its predicted returns against the observed ones
        image = return_plot.draw(probe["teams"], return_plot.title(cfg, step, episodes))
        files.append(return_plot.save(image, out_dir, f"{name}_returns.png"))
    if render:
        fps = int(options.get("fps", 10))
        video = Path(options["video"]).expanduser() if "video" in options else out_dir / f"{name}.gif"
        files.append(write_animation(frames, video, fps=fps))
        if options.get("tensorboard", True):
            add_animation_to_tensorboard(run_dir, f"eval/episode_seed_{seed}", frames, step, fps=fps)
    record = {"run_dir": str(run_dir), "checkpoint": str(path), "step": step, "seed": seed, "episodes": episodes,
              "metrics": metrics, "training": training, "files": [str(f) for f in files]}
    write_json(files[0], record)
    return record


def print_result(record: dict, console) -> None:
    table = Table(title=f"{record['run_dir']}: step {record['step']:,}, seed {record['seed']}, {record['episodes']} greedy episodes")
    table.add_column("metric")
    table.add_column("now", justify="right")
    training = record["training"]
    if training is not None:
        table.add_column("training-time evaluation", justify="right")
    for key, value in record["metrics"].items():
        row = [key, f"{value:.4f}"]
        if training is not None:
            row.append(f"{training[key]:.4f}" if key in training else "-")
        table.add_row(*row)
    console.print(table)
    if training is None:
        console.print("[dim]no training-time evaluation to compare with (none at this step, or another seed or episode count)")
    for f in record.get("files", []):
        console.print(f"wrote {f}", soft_wrap=True)


def main(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    run_dir, options = parse_args(args)
    record = evaluate_run(run_dir, options)
    print_result(record, console)
    return 0
