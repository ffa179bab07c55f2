"""`marlrun report`: grouping, statistics against numpy references, problem runs, CSVs, plots and bad input."""

import csv
import json

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf
from rich.console import Console

from marlrun import report
from marlrun.errors import UserError

TOTAL = 1000
STEPS = np.arange(100, TOTAL + 1, 100)  # a log record every 100 env steps, like log_interval=100
EVAL_EVERY = 2  # eval/episode_return at every second record (and the last)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--bootstrap", "500", "--rliable-reps", "200", "--no-plots"]


def curve(sharing: str, seed: int, steps=STEPS) -> np.ndarray:
    """A known learning curve per group and seed: quantile learns faster than none, seeds differ in slope."""
    slope = {"none": 1.0, "quantile": 3.0}[sharing] * (1 + 0.2 * seed)
    return -10 + slope * np.asarray(steps) / 100


def make_run(folder, *, sharing="none", seed=0, steps=STEPS, values=None, status="finished", total=TOTAL,
             metrics=True, summary=True, device="cpu", extra=None, overrides=None):
    """A run folder as `marlrun train` writes it: .hydra/config.yaml + overrides.yaml, metrics.jsonl, summary.json."""
    (folder / ".hydra").mkdir(parents=True)
    cfg = {
        "algo": {"_target_": "marlrun.algos.super_ddqn.SuperDDQN", "name": "super_ddqn", "sharing": sharing,
                 "lr": 0.00016, "conv_channels": [32, 64, 64], "share_team": None},
        "env": {"_target_": "marlrun.envs.pursuit.make_pursuit", "name": "pursuit", "x_size": 10},
        "hardware": {"device": device, "num_envs": 4},
        "seed": seed, "total_steps": total, "log_interval": 100, "resume": None, "progress": False,
        "print_config": False, "run_name": "${algo.name}_${env.name}",
    }
    OmegaConf.save(OmegaConf.merge(cfg, extra or {}), folder / ".hydra" / "config.yaml")
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides or [f"algo.sharing={sharing}", f"seed={seed}"]))
    values = curve(sharing, seed, steps) if values is None else np.asarray(values)
    if metrics:
        lines = []
        for i, (step, value) in enumerate(zip(steps, values)):
            record = {"step": int(step), "train/episode_return": float(value) - 1, "perf/steps_per_sec": 100.0}
            if i % EVAL_EVERY == EVAL_EVERY - 1 or i == len(steps) - 1:
                record["eval/episode_return"] = float(value)
            lines.append(json.dumps(record) + "\n")
        (folder / "metrics.jsonl").write_text("".join(lines))
    if summary:
        last = int(steps[-1]) if len(steps) else 0
        (folder / "summary.json").write_text(json.dumps({"status": status, "env_steps": last, "total_steps": total}))
    return folder


def eval_series(sharing, seed, steps=STEPS):
    """The eval/episode_return points make_run writes: every second record and the last."""
    values = curve(sharing, seed, steps)
    keep = [i for i in range(len(steps)) if i % EVAL_EVERY == EVAL_EVERY - 1 or i == len(steps) - 1]
    return np.asarray(steps)[keep], values[keep]


@pytest.fixture
def sweep(tmp_path):
    """A multirun folder: 2 groups (algo.sharing) x 3 seeds, jobs 0..5."""
    root = tmp_path / "multirun"
    root.mkdir()
    (root / "multirun.yaml").write_text("hydra: {}\n")
    job = 0
    for sharing in ("none", "quantile"):
        for seed in range(3):
            make_run(root / str(job), sharing=sharing, seed=seed)
            job += 1
    return root


def run_report(args, width=200):
    """main() with a wide console whose text is returned; asserts the exit code is 0."""
    console = Console(width=width, record=True, force_terminal=False)
    assert report.main([str(a) for a in args], console=console) == 0
    return console.export_text()


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def reference_ci(values, n, seed, level=0.95):
    """Percentile bootstrap written out plainly: n resamples of the runs with replacement, their means' quantiles."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = [sample.mean() for sample in rng.choice(values, size=(n, len(values)), replace=True)]
    return tuple(np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2]))


# ---------------------------------------------------------------------------- helpers
def test_auc_is_the_trapezoid_mean_over_the_step_span():
    steps, values = np.array([100, 200, 400, 1000]), np.array([0.0, 2.0, 1.0, 5.0])
    assert report.auc(steps, values) == pytest.approx(np.trapezoid(values, steps) / 900)
    assert report.auc(np.array([7]), np.array([3.5])) == 3.5
    assert report.auc(steps, np.full(4, -2.0)) == pytest.approx(-2.0)  # a flat curve's mean is its value


def test_steps_to_threshold_is_the_first_step_reaching_it():
    steps, values = [100, 200, 300, 400], [0.0, 1.0, 0.5, 2.0]
    assert report.steps_to_threshold(steps, values, 0.9) == 200
    assert report.steps_to_threshold(steps, values, 1.0) == 200  # >=, not >
    assert report.steps_to_threshold(steps, values, 1.5) == 400
    assert report.steps_to_threshold(steps, values, 2.5) is None


def test_bootstrap_ci_matches_a_plain_reference():
    values = [1.0, 4.0, 2.5, 7.0, 3.0]
    low, high = report.bootstrap_ci(values, 2000, np.random.default_rng(7))
    assert (low, high) == pytest.approx(reference_ci(values, 2000, 7), rel=1e-12)
    assert low < np.mean(values) < high
    assert report.bootstrap_ci(values, 2000, np.random.default_rng(7)) == (low, high)  # deterministic
    wide = report.bootstrap_ci([0.0, 10.0, 5.0, 2.0], 2000, np.random.default_rng(0))
    narrow = report.bootstrap_ci([4.0, 4.5, 4.2, 4.1], 2000, np.random.default_rng(0))
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 5
    low90, high90 = report.bootstrap_ci(values, 2000, np.random.default_rng(7), level=0.9)
    assert low <= low90 and high90 <= high
    assert report.bootstrap_ci([3.25], 100, np.random.default_rng(0)) == (3.25, 3.25)


def test_mean_curve_aligns_runs_and_bands_the_mean():
    same = [(STEPS, curve("none", s)) for s in range(3)]
    steps, mean, low, high = report.mean_curve(same, 1000, 0)
    assert np.array_equal(steps, STEPS)
    assert mean == pytest.approx(np.mean([v for _, v in same], axis=0))
    assert np.all(low <= mean + 1e-12) and np.all(mean <= high + 1e-12) and np.any(high > low)
    assert (low[-1], high[-1]) == pytest.approx(reference_ci([v[-1] for _, v in same], 1000, 0))

    short = np.array([150, 250, 450])  # other steps, ends before the others: interpolated, cut at 450
    steps, mean, _, _ = report.mean_curve([(STEPS, curve("none", 0)), (short, curve("none", 0, short))], 100, 0)
    assert steps.tolist() == [150, 200, 250, 300, 400, 450]
    assert mean == pytest.approx(curve("none", 0, steps))  # both runs lie on the same line


# ---------------------------------------------------------------------------- finding and grouping
def test_find_runs_in_job_order_at_any_depth_skipping_checkpoints(tmp_path):
    for job in (0, 2, 10, 1, 9):
        make_run(tmp_path / "sweep" / str(job))
    make_run(tmp_path / "deeper" / "a" / "b" / "run")
    (tmp_path / "sweep" / "0" / "checkpoints" / ".hydra").mkdir(parents=True)  # not a run
    (tmp_path / "sweep" / "0" / "checkpoints" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    found = report.find_runs([tmp_path / "sweep", tmp_path])
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    assert names == ["sweep/0", "sweep/1", "sweep/2", "sweep/9", "sweep/10", "deeper/a/b/run"]  # no duplicates
    assert report.find_runs([tmp_path / "sweep" / "9"]) == [tmp_path / "sweep" / "9"]  # a run folder itself


def test_grouping_finds_exactly_the_differing_key(sweep):
    runs = report.load_runs([sweep])
    groups = report.group_runs(runs)
    assert [g.label for g in groups] == ["independent DDQN", "SUPER quantile"]  # the methods' names (keys in g.values)
    assert [list(g.values) for g in groups] == [["algo.sharing"], ["algo.sharing"]]
    assert [[r.seed for r in g.runs] for g in groups] == [[0, 1, 2], [0, 1, 2]]
    assert runs[0].config["run_name"] == "super_ddqn_pursuit"  # interpolations resolved
    assert runs[0].config["algo.conv_channels"] == [32, 64, 64]


def test_grouping_with_nothing_differing_and_with_ignored_keys(tmp_path):
    for seed in range(2):
        make_run(tmp_path / "same" / str(seed), seed=seed)
    assert [g.label for g in report.group_runs(report.load_runs([tmp_path / "same"]))] == ["all runs"]

    make_run(tmp_path / "mixed" / "0", sharing="none", device="cpu")
    make_run(tmp_path / "mixed" / "1", sharing="quantile", device="cuda", extra={"algo": {"lr": 0.5}})
    runs = report.load_runs([tmp_path / "mixed"])
    assert report.differing_keys(runs) == ["algo.sharing", "algo.lr", "hardware.device"]  # config order, no seed
    assert [g.label for g in report.group_runs(runs)] == ["independent DDQN, algo.lr=0.00016, hardware.device=cpu",
                                                           "SUPER quantile, algo.lr=0.5, hardware.device=cuda"]  # what else differs
    labels = [g.label for g in report.group_runs(runs, ignore=["hardware", "algo"])]
    assert labels == ["all runs"]
    labels = [g.label for g in report.group_runs(runs, ignore=["hardware"])]
    assert "hardware.device" not in labels[0] and labels[0] == "independent DDQN, algo.lr=0.00016"


def test_many_differing_keys_are_labelled_by_the_overrides_that_tell_groups_apart(tmp_path):
    def against_super_ddqn(name: str) -> list:
        """Two seeds of SUPER-DDQN and two of an algorithm called ``name`` with MADDPG's keys; their runs."""
        other = {"algo": {"_target_": "marlrun.algos.maddpg.MADDPG", "name": name, "lr": 0.01, "tau": 0.01, "gamma": 0.95, "hidden": [64, 64]}}
        for seed in range(2):
            make_run(tmp_path / name / str(seed), seed=seed, overrides=["algo=super_ddqn", f"seed={seed}", "experiment=x"])
            make_run(tmp_path / name / str(seed + 2), seed=seed, extra=other, overrides=[f"algo={name}", f"seed={seed}", "experiment=x"])
        return report.load_runs([tmp_path / name])

    assert [g.label for g in report.group_runs(against_super_ddqn("maddpg"))] == ["independent DDQN", "MADDPG"]
    runs = against_super_ddqn("custom")  # an algorithm without a name: the overrides that tell the groups apart
    groups = report.group_runs(runs)
    assert [g.label for g in groups] == ["algo=super_ddqn", "algo=custom"]
    assert list(groups[0].values) == ["algo.name", "algo.lr", "run_name", "algo.tau", "algo.gamma", "algo.hidden"]  # kept for the CSV
    assert [[r.seed for r in g.runs] for g in groups] == [[0, 1], [0, 1]]

    runs[0].overrides = []  # overrides no longer the same within a group: label by the config keys
    assert report.group_runs(runs)[0].label.startswith("algo.name=super_ddqn, algo.lr=")


def test_config_with_unresolvable_interpolation_falls_back_to_its_text(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("a: {b: 1, c: '${a.b}', d: '${no_such_resolver:x}'}\nlist: ['${a.b}', 2]\n")
    flat = report.load_config(path)
    assert flat == {"a.b": 1, "a.c": 1, "a.d": "${no_such_resolver:x}", "list": [1, 2]}


# ---------------------------------------------------------------------------- statistics end to end
def test_report_statistics_match_numpy_reference(sweep, tmp_path):
    out = tmp_path / "out"
    threshold = 0.5  # `none` seed 0 ends at 0.0 and never reaches it; every other run does
    text = run_report([sweep, "--threshold", threshold, "--bootstrap", 800, "--seed", 3, "--out", out, "--no-plots"])
    rows = read_csv(out / "report.csv")
    assert [(r["group"], r["algo.sharing"], r["metric"], r["runs"]) for r in rows] == [
        ("independent DDQN", "none", "eval/episode_return", "3"), ("SUPER quantile", "quantile", "eval/episode_return", "3")]
    for row, sharing in zip(rows, ("none", "quantile")):
        points = [eval_series(sharing, seed) for seed in range(3)]
        finals = [v[-1] for _, v in points]
        aucs = [np.trapezoid(v, s) / (s[-1] - s[0]) for s, v in points]
        reached = [next((int(st) for st, v in zip(s, vals) if v >= threshold), None) for s, vals in points]
        reached = [r for r in reached if r is not None]
        assert float(row["final_mean"]) == pytest.approx(np.mean(finals))
        assert float(row["auc_mean"]) == pytest.approx(np.mean(aucs))
        assert (float(row["final_ci_low"]), float(row["final_ci_high"])) == pytest.approx(reference_ci(finals, 800, 3))
        assert (float(row["auc_ci_low"]), float(row["auc_ci_high"])) == pytest.approx(reference_ci(aucs, 800, 3))
        assert float(row["final_ci_low"]) <= float(row["final_mean"]) <= float(row["final_ci_high"])
        assert int(row["reached"]) == len(reached)
        assert float(row["steps_to_threshold_mean"]) == pytest.approx(np.mean(reached))
        assert float(row["threshold"]) == threshold
    assert rows[0]["reached"] == "2" and rows[1]["reached"] == "3"
    assert "SUPER quantile" in text and "2/3" in text and "threshold 0.5 (--threshold)" in text

    runs = read_csv(out / "runs.csv")
    assert [(r["folder"].split("/")[-1], r["group"], r["seed"], r["status"], r["included"]) for r in runs] == [
        (str(job), {"none": "independent DDQN", "quantile": "SUPER quantile"}[sharing], str(seed), "finished", "true")
        for job, (sharing, seed) in enumerate((s, k) for s in ("none", "quantile") for k in range(3))]
    first_s, first_v = eval_series("quantile", 1)
    assert float(runs[4]["final"]) == pytest.approx(first_v[-1])
    assert float(runs[4]["auc"]) == pytest.approx(np.trapezoid(first_v, first_s) / (first_s[-1] - first_s[0]))
    assert int(runs[4]["steps_to_threshold"]) == next(int(s) for s, v in zip(first_s, first_v) if v >= threshold)


def test_default_metric_and_threshold(sweep, tmp_path):
    out = tmp_path / "out"
    text = run_report([sweep, "--out", out, *FAST, "--metric", "train/episode_return"])
    rows = read_csv(out / "report.csv")
    train = [[curve(sharing, seed) - 1 for seed in range(3)] for sharing in ("none", "quantile")]
    first = np.mean([v[0] for group in train for v in group])
    best = max(np.mean([v[-1] for v in group]) for group in train)
    assert float(rows[0]["threshold"]) == pytest.approx((first + best) / 2)
    assert "half-way between the mean first value" in text

    run_report([sweep, "--out", out, *FAST])  # no --metric: eval/episode_return, logged by these runs
    assert {r["metric"] for r in read_csv(out / "report.csv")} == {"eval/episode_return"}


def test_bootstrap_seed_makes_results_deterministic(sweep, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_report([sweep, "--out", tmp_path / name, "--seed", seed, *FAST])
    a, b, c = ((tmp_path / n / "report.csv").read_text() for n in "abc")
    assert a == b and a != c


# ---------------------------------------------------------------------------- problem runs
@pytest.fixture
def troubled(sweep):
    """The sweep plus: a partial run (no summary.json), a run with no metrics.jsonl, a failed run, an empty
    metrics.jsonl and a run stopped by SIGINT, all in group `none`."""
    make_run(sweep / "6", seed=3, steps=STEPS[:5], summary=False)
    make_run(sweep / "7", seed=4, metrics=False, summary=False)
    make_run(sweep / "8", seed=5, status="failed: CUDA out of memory")
    make_run(sweep / "9", seed=6, steps=STEPS[:0])
    make_run(sweep / "10", seed=7, steps=STEPS[:3], status="stopped by SIGINT")
    (sweep / "8" / "error.log").write_text("Traceback ...\n")
    return sweep


def test_problem_runs_are_listed_with_reasons_and_excluded(troubled, tmp_path):
    out = tmp_path / "out"
    text = run_report([troubled, "--out", out, *FAST], width=400)
    runs = {r["folder"].split("/")[-1]: r for r in read_csv(out / "runs.csv")}
    assert [job for job, r in runs.items() if r["included"] == "false"] == ["6", "7", "8", "9", "10"]
    assert "unfinished or crashed" in runs["6"]["problems"] and "last step 500 of 1,000" in runs["6"]["problems"]
    assert float(runs["6"]["final"]) == pytest.approx(eval_series("none", 3, STEPS[:5])[1][-1])  # still measured
    assert "no metrics.jsonl" in runs["7"]["problems"]
    assert runs["8"]["status"] == "failed: CUDA out of memory"
    assert runs["8"]["problems"] == "failed: CUDA out of memory (see error.log)"
    assert "metrics.jsonl is empty" in runs["9"]["problems"]
    assert "stopped by SIGINT at step 300 of 1,000" in runs["10"]["problems"]
    assert all(runs[str(job)]["problems"] == "" for job in range(6))

    rows = read_csv(out / "report.csv")
    assert [(r["runs"], r["runs_total"]) for r in rows] == [("3", "8"), ("3", "3")]
    finals = [eval_series("none", seed)[1][-1] for seed in range(3)]
    assert float(rows[0]["final_mean"]) == pytest.approx(np.mean(finals))  # the problem runs change nothing

    assert "problems: 5 run(s)" in text and "3 of 8" in text
    for job, reason in [("6", "unfinished or crashed"), ("7", "no metrics.jsonl"), ("8", "failed: CUDA out of memory"),
                        ("9", "metrics.jsonl is empty"), ("10", "stopped by SIGINT")]:
        line = next(line for line in text.splitlines() if f"{troubled / job} " in line)
        assert reason in line and "excluded" in line


def test_include_partial_includes_partial_runs_but_never_failed_ones(troubled, tmp_path):
    out = tmp_path / "out"
    text = run_report([troubled, "--out", out, "--include-partial", *FAST], width=400)
    runs = {r["folder"].split("/")[-1]: r["included"] for r in read_csv(out / "runs.csv")}
    assert runs["6"] == "true" and runs["10"] == "true"  # partial: unfinished, stopped
    assert runs["8"] == "false" and runs["7"] == "false" and runs["9"] == "false"  # failed, no data
    rows = read_csv(out / "report.csv")
    assert rows[0]["runs"] == "5"
    finals = [eval_series("none", seed)[1][-1] for seed in range(3)]
    finals += [eval_series("none", 3, STEPS[:5])[1][-1], eval_series("none", 7, STEPS[:3])[1][-1]]
    assert float(rows[0]["final_mean"]) == pytest.approx(np.mean(finals))
    assert "partial runs included" in text


def test_a_run_that_never_logged_the_metric_is_listed(sweep, tmp_path):
    folder = make_run(sweep / "6", seed=3)
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    (folder / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in json.loads(line).items()
                                                              if k != "eval/episode_return"}) + "\n" for line in lines))
    out = tmp_path / "out"
    text = run_report([sweep, "--out", out, *FAST], width=400)
    assert "eval/episode_return never logged" in text
    assert read_csv(out / "report.csv")[0]["runs"] == "3"


def test_a_corrupt_metrics_file_is_that_runs_problem_and_a_record_cut_short_is_left_out(sweep, tmp_path):
    corrupt = make_run(sweep / "6", seed=3)
    lines = (corrupt / "metrics.jsonl").read_text().splitlines(keepends=True)
    (corrupt / "metrics.jsonl").write_text("".join(lines[:2] + ["{not json\n"] + lines[2:]))
    cut = make_run(sweep / "7", seed=4)
    with open(cut / "metrics.jsonl", "a") as f:
        f.write('{"step": 1100, "eval/episode_return": 99')  # a process that died mid-write
    out = tmp_path / "out"
    text = run_report([sweep, "--out", out, *FAST], width=400)
    runs = {r["folder"].split("/")[-1]: r for r in read_csv(out / "runs.csv")}
    problem = runs["6"]["problems"]
    assert f"{corrupt / 'metrics.jsonl'}: line 3 is not a JSON record" in problem and runs["6"]["included"] == "false"
    assert runs["7"]["problems"] == "" and runs["7"]["included"] == "true"
    assert runs["7"]["last_step"] == str(TOTAL)  # the cut record is not in it
    assert float(runs["7"]["final"]) == pytest.approx(eval_series("none", 4)[1][-1])
    assert "problems: 1 run(s)" in text
    assert read_csv(out / "report.csv")[0]["runs"] == "4"  # the 3 seeds and the run cut short


# ---------------------------------------------------------------------------- files
def test_pngs_and_default_output_folder(sweep):
    text = run_report([sweep, "--bootstrap", 300, "--metric", "eval/episode_return", "--metric", "train/episode_return"])
    out = sweep / "report"  # one DIR: DIR/report
    for name in ("curves_eval_episode_return.png", "curves_train_episode_return.png"):
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    assert (out / "report.csv").is_file() and (out / "runs.csv").is_file()
    assert f"report written to {out}" in text
    assert {r["metric"] for r in read_csv(out / "report.csv")} == {"eval/episode_return", "train/episode_return"}
    assert len(read_csv(out / "runs.csv")) == 12  # 6 runs x 2 metrics
    assert report.find_runs([sweep]) == [sweep / str(j) for j in range(6)]  # the report folder is no run


def test_several_dirs_default_to_report_in_the_working_folder(tmp_path, monkeypatch):
    make_run(tmp_path / "a" / "run", sharing="none")
    make_run(tmp_path / "b" / "run", sharing="quantile")
    monkeypatch.chdir(tmp_path)
    run_report(["a", "b", *FAST])
    rows = read_csv(tmp_path / "report" / "report.csv")
    assert [r["group"] for r in rows] == ["independent DDQN", "SUPER quantile"]


# ---------------------------------------------------------------------------- mistakes
def test_bad_inputs_raise_one_clear_user_error(sweep, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        report.main([str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no run folders"):
        report.main([str(tmp_path / "empty")])
    with pytest.raises(UserError, match="is a file"):
        report.main([str(sweep / "multirun.yaml")])
    with pytest.raises(UserError, match=r"no run logged the metric 'eval/episode_retrun' \(did you mean eval/episode_return\?\)"
                                        r".*train/episode_return"):
        report.main([str(sweep), "--metric", "eval/episode_retrun"])
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="--out .* is a file"):
        report.main([str(sweep), "--out", str(tmp_path / "file"), *FAST])
    with pytest.raises(UserError, match=r"--ignore algo.sharring: no run's config has this key \(did you mean algo.sharing\?\)"):
        report.main([str(sweep), "--ignore", "algo.sharring", *FAST])
    with pytest.raises(UserError, match="--threshold nan: must be a finite number"):
        report.main([str(sweep), "--threshold", "nan", *FAST])
    assert report.main([str(sweep), "--ignore", "algo", "--ignore", "hardware.num_envs", *FAST]) == 0  # a group of keys, a key
    for bad in ("-1", "x"):  # argparse's own one-line error and exit 2, not a traceback from the bootstrap's generator
        with pytest.raises(SystemExit) as exited:
            report.main([str(sweep), "--seed", bad, *FAST])
        assert exited.value.code == 2


def test_only_partial_runs_is_an_error_that_says_what_to_do(tmp_path):
    for seed in range(2):
        make_run(tmp_path / "runs" / str(seed), seed=seed, steps=STEPS[:4], summary=False)
    with pytest.raises(UserError, match=r"--include-partial to include the 2 unfinished"):
        report.main([str(tmp_path / "runs"), *FAST])
    assert not (tmp_path / "runs" / "report").exists()
    assert report.main([str(tmp_path / "runs"), "--include-partial", *FAST]) == 0


def test_no_metrics_anywhere_is_a_user_error(tmp_path):
    make_run(tmp_path / "run", metrics=False)
    with pytest.raises(UserError, match="logged any metric"):
        report.main([str(tmp_path / "run")])


def test_argparse_mistakes_exit_with_code_2(sweep, capsys):
    for argv in ([], [str(sweep), "--bootstrap", "0"], [str(sweep), "--threshold", "high"]):
        with pytest.raises(SystemExit) as exc:
            report.main(argv)
        assert exc.value.code == 2
    assert "marlrun report" in capsys.readouterr().err


# ---------------------------------------------------------------------------- rliable: IQM, P(A > B), profiles
def test_iqm_of_a_known_set_ignores_the_outer_quartiles():
    from marlrun.report import reliable

    eight = reliable.iqm([1, 2, 3, 4, 5, 6, 7, 8], reps=500, seed=0)
    assert eight.mean == pytest.approx(4.5)  # mean of the middle half: 3, 4, 5, 6
    assert reliable.iqm([1, 2, 3, 4, 5, 6, 7, 1000], reps=500, seed=0).mean == pytest.approx(4.5)  # an outlying seed
    assert 1 <= eight.low <= eight.mean <= eight.high <= 8
    assert reliable.iqm([], reps=500, seed=0) is None


def test_probability_of_improvement_of_two_known_sets():
    from marlrun.report import reliable

    # pairs (x in A, y in B) with x > y: 1 + 2 + 3 + 4 = 10, ties x = y: 3 (a half each): (10 + 1.5) / 16
    p = reliable.probability_of_improvement([1, 2, 3, 4], [0, 1, 2, 3], reps=500, seed=0)
    assert p.mean == pytest.approx(11.5 / 16)
    assert 0 <= p.low <= p.mean <= p.high <= 1
    assert reliable.probability_of_improvement([5, 6, 7], [1, 2, 3], reps=500, seed=0).mean == 1.0
    assert reliable.probability_of_improvement([1, 2, 3], [5, 6, 7], reps=500, seed=0).mean == 0.0
    assert reliable.probability_of_improvement([1, 2], [1, 2], reps=500, seed=0).mean == 0.5


def test_performance_profile_points_are_the_fraction_of_runs_above_tau():
    from marlrun.report import reliable

    fraction, low, high = reliable.performance_profile([1, 2, 3, 4], np.array([0.5, 2.5, 3.5, 4.0]), reps=500, seed=0)
    np.testing.assert_allclose(fraction, [1.0, 0.5, 0.25, 0.0])
    assert (low <= fraction + 1e-12).all() and (fraction <= high + 1e-12).all()
    assert reliable.profile_taus([1, 2, 3, 4])[0] < 1 and reliable.profile_taus([1, 2, 3, 4])[-1] == 4


def test_rliable_intervals_are_seeded_and_leave_numpys_global_rng_alone():
    from marlrun.report import reliable

    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    a, b = (reliable.iqm([10.0, 22.0, 32.0, 5.0], reps=300, seed=s) for s in (0, 0))
    assert a == b
    assert np.random.rand() == expected


def test_report_gives_iqm_comparisons_and_profiles(sweep, tmp_path):
    from marlrun.report import reliable

    out = tmp_path / "out"
    text = run_report([sweep, "--out", out, "--bootstrap", 300, "--rliable-reps", 300,
                       "--compare", "quantile", "none", "--compare", "algo.sharing=none", "algo.sharing=quantile"])
    rows = read_csv(out / "report.csv")
    for row, sharing in zip(rows, ("none", "quantile")):
        finals = [eval_series(sharing, seed)[1][-1] for seed in range(3)]
        aucs = [np.trapezoid(v, s) / (s[-1] - s[0]) for s, v in (eval_series(sharing, seed) for seed in range(3))]
        assert float(row["final_iqm"]) == pytest.approx(reliable.iqm(finals, 300, 0).mean)
        assert float(row["auc_iqm"]) == pytest.approx(np.mean(aucs))  # three runs: the IQM keeps all of them
        assert float(row["final_iqm_ci_low"]) <= float(row["final_iqm"]) <= float(row["final_iqm_ci_high"])
    better = read_csv(out / "improvement.csv")
    assert [(r["a"], r["b"], r["statistic"], float(r["p_a_beats_b"])) for r in better] == [
        ("SUPER quantile", "independent DDQN", "final", 1.0), ("SUPER quantile", "independent DDQN", "auc", 1.0),
        ("independent DDQN", "SUPER quantile", "final", 0.0), ("independent DDQN", "SUPER quantile", "auc", 0.0)]
    profile = read_csv(out / "profile.csv")
    assert {r["group"] for r in profile} == {"independent DDQN", "SUPER quantile"}
    none = [r for r in profile if r["group"] == "independent DDQN"]
    finals = np.array([eval_series("none", seed)[1][-1] for seed in range(3)])
    for r in none:
        assert float(r["fraction_above"]) == pytest.approx(np.mean(finals > float(r["tau"])))
    assert (out / "profile_eval_episode_return.png").read_bytes().startswith(PNG_MAGIC)
    assert "final IQM" in text and "P(A > B)" in text


def test_compare_names_a_group_by_parts_of_its_label_in_any_order():
    from marlrun.report.reliable import resolve_group

    labels = ["algo.sharing=none, algo.parameter_sharing=false", "algo.sharing=none, algo.parameter_sharing=true",
              "algo.sharing=quantile, algo.parameter_sharing=false", "algo.name=qmix, algo.sharing=(not set)"]
    assert resolve_group("parameter_sharing=true, algo.sharing=none", labels) == labels[1]
    assert resolve_group("algo.sharing=none, algo.parameter_sharing=false", labels) == labels[0]
    assert resolve_group("quantile", labels) == labels[2] and resolve_group("qmix", labels) == labels[3]
    with pytest.raises(UserError, match="names 2 groups"):
        resolve_group("algo.sharing=none", labels)
    with pytest.raises(UserError, match="no group is named 'all, parameter_sharing=true'"):
        resolve_group("all, parameter_sharing=true", labels)
    with pytest.raises(UserError, match="no group is named ', '"):
        resolve_group(", ", labels)


def test_compare_names_a_group_by_its_config_when_the_table_labels_groups_by_their_overrides():
    # with QMIX among them, more keys differ than a label shows, so the groups are labelled by their Hydra overrides
    # ("algo.sharing=none" for independent DDQN); a name by config keys must still find the same group
    from marlrun.report.cli import resolve_pairs
    from marlrun.report.runs import ABSENT, Group

    groups = [Group("algo.sharing=none", {"algo.sharing": "none", "algo.parameter_sharing": False, "algo.name": "super_ddqn"}, []),
              Group("algo.sharing=none, algo.parameter_sharing=true", {"algo.sharing": "none", "algo.parameter_sharing": True, "algo.name": "super_ddqn"}, []),
              Group("algo.sharing=quantile", {"algo.sharing": "quantile", "algo.parameter_sharing": False, "algo.name": "super_ddqn"}, []),
              Group("algo=qmix", {"algo.sharing": ABSENT, "algo.parameter_sharing": True, "algo.name": "qmix"}, [])]
    assert resolve_pairs([("quantile", "algo.sharing=none,parameter_sharing=false"), ("quantile", "sharing=none, parameter_sharing=true"),
                          ("quantile", "qmix"), ("algo.sharing=none", "parameter_sharing=true, name=qmix")], groups) == [
        ("algo.sharing=quantile", "algo.sharing=none"), ("algo.sharing=quantile", "algo.sharing=none, algo.parameter_sharing=true"),
        ("algo.sharing=quantile", "algo=qmix"), ("algo.sharing=none", "algo=qmix")]
    with pytest.raises(UserError, match="'parameter_sharing=true' names 2 groups"):
        resolve_pairs([("quantile", "parameter_sharing=true")], groups)


def test_compare_names_an_unknown_or_ambiguous_group_with_one_clear_error(sweep, tmp_path):
    with pytest.raises(UserError, match=r"no group is named 'gaussian'; the groups are: 'independent DDQN'; 'SUPER quantile'"):
        report.main([str(sweep), "--compare", "quantile", "gaussian", *FAST])
    with pytest.raises(UserError, match="names 2 groups"):
        report.main([str(sweep), "--compare", "algo.sharing", "none", *FAST])
    with pytest.raises(UserError, match="compare two different groups"):
        report.main([str(sweep), "--compare", "none", "algo.sharing=none", *FAST])
    assert not (sweep / "report").exists()  # nothing written before the mistake is found
    from conftest import run_cli

    result = run_cli("report", str(sweep), "--compare", "quantile", "gaussian", "--no-plots")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "no group is named 'gaussian'" in result.stderr


def test_labels_name_groups_in_tables_csvs_and_comparisons_and_few_runs_are_flagged(sweep, tmp_path):
    out = tmp_path / "out"
    text = run_report([sweep, "--out", out, "--bootstrap", 200, "--rliable-reps", 200, "--no-plots",
                       "--label", "algo.sharing=none=independent DDQN", "--label", "quantile=SUPER quantile",
                       "--compare", "SUPER quantile", "algo.sharing=none"])  # a new name, or the config's
    assert [r["group"] for r in read_csv(out / "report.csv")] == ["independent DDQN", "SUPER quantile"]
    assert {(r["a"], r["b"]) for r in read_csv(out / "improvement.csv")} == {("SUPER quantile", "independent DDQN")}
    assert "independent DDQN" in text and "algo.sharing=none" not in text
    assert "warning: every group has fewer than 5 runs" in " ".join(text.split())


def test_a_label_that_names_no_group_or_two_is_one_error(sweep, tmp_path):
    with pytest.raises(UserError, match="--label: no group is named 'sharing=all'"):
        report.main([str(sweep), "--out", str(tmp_path), "--no-plots", "--label", "sharing=all=everything"])
    with pytest.raises(UserError, match="--label 'nothing': write GROUP=NAME"):
        report.main([str(sweep), "--out", str(tmp_path), "--no-plots", "--label", "nothing"])
    with pytest.raises(UserError, match="two groups would both be shown as 'same'"):
        report.main([str(sweep), "--out", str(tmp_path), "--no-plots", "--label", "none=same", "--label", "quantile=same"])


def test_runs_from_before_and_after_the_registry_group_together(tmp_path):
    """Older run folders name their builder (algo._target_); newer ones do not: the same experiment all the same."""
    for seed in range(2):
        make_run(tmp_path / f"old_{seed}", seed=seed)
        folder = make_run(tmp_path / f"new_{seed}", seed=seed + 2)
        path = folder / ".hydra" / "config.yaml"
        cfg = yaml.safe_load(path.read_text())
        del cfg["algo"]["_target_"], cfg["env"]["_target_"]
        path.write_text(yaml.safe_dump(cfg))
    groups = report.group_runs(report.load_runs([str(tmp_path)]))
    assert [(g.label, len(g.runs)) for g in groups] == [("all runs", 4)]
