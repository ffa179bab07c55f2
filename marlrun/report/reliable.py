"""The statistics the evaluation literature asks for, computed with Google's ``rliable`` library.

Agarwal et al., "Deep RL at the edge of the statistical precipice" (NeurIPS 2021), and Gorsane et al. for MARL
(NeurIPS 2022) ask for, over a group's runs:

- the interquartile mean (IQM): the mean of the middle 50 % of the runs' scores, robust to one outlying seed and
  far less noisy than the median, with a 95 % stratified bootstrap confidence interval;
- the probability of improvement P(A > B): the chance that a run of group A scores higher than a run of group B
  (ties count a half; the Mann-Whitney U statistic over the two sets of runs), with its bootstrap interval;
- performance profiles: the fraction of a group's runs that score above tau, for every tau, with bootstrap bands.

A run's score is its final value or its AUC of a metric (as in the report's table). A report compares groups on
one environment, i.e. one task: rliable's stratified bootstrap then resamples the runs of each group.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from marlrun.errors import UserError

LEVEL = 0.95


def _rliable():
    """rliable's ``library`` and ``metrics`` modules, imported on first use: they are slow to import (arch, pandas,
    scipy) and only these statistics need them, not the rest of the report nor any other command."""
    with warnings.catch_warnings():  # arch (rliable's bootstrap) warns about optional numba on import
        warnings.simplefilter("ignore")
        from rliable import library, metrics
    return library, metrics


@dataclass
class Interval:
    """A point estimate and its bootstrap confidence interval (the fields of ``report.Estimate``, so the report
    formats both alike)."""

    mean: float
    low: float
    high: float


def _scores(values: Sequence[float]) -> np.ndarray:
    """rliable's layout: [runs, tasks], here one task."""
    return np.asarray(values, dtype=float).reshape(-1, 1)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed rliable's bootstrap: rliable 1.2's StratifiedBootstrap draws its resamples from numpy's global RNG
    whatever random_state it is given, so seed that for the call and restore it after. Also silences arch's
    deprecation warning about the random_state keyword rliable passes."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield np.random.RandomState(seed)
    finally:
        np.random.set_state(state)


def iqm(values: Sequence[float], reps: int, seed: int) -> Interval | None:
    """Interquartile mean of the runs' scores with its 95 % stratified bootstrap interval; None for no runs."""
    rly, metrics = _rliable()
    if len(values) == 0:
        return None
    with _seeded(seed) as rng:
        point, ci = rly.get_interval_estimates({"g": _scores(values)}, lambda s: np.array([metrics.aggregate_iqm(s)]),
                                               reps=reps, confidence_interval_size=LEVEL, random_state=rng)
    return Interval(float(point["g"][0]), float(ci["g"][0, 0]), float(ci["g"][1, 0]))


def probability_of_improvement(a: Sequence[float], b: Sequence[float], reps: int, seed: int) -> Interval | None:
    """P(a run of A scores higher than a run of B), ties a half, with its 95 % stratified bootstrap interval."""
    rly, metrics = _rliable()
    if len(a) == 0 or len(b) == 0:
        return None
    with _seeded(seed) as rng:
        point, ci = rly.get_interval_estimates({"ab": (_scores(a), _scores(b))}, metrics.probability_of_improvement,
                                               reps=reps, confidence_interval_size=LEVEL, random_state=rng)
    low, high = np.ravel(ci["ab"])
    return Interval(float(point["ab"]), float(low), float(high))


def performance_profile(values: Sequence[float], taus: np.ndarray, reps: int, seed: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of runs scoring above each tau (rliable's score distribution), with 95 % bootstrap bands."""
    rly, metrics = _rliable()
    with _seeded(seed) as rng:
        point, ci = rly.get_interval_estimates({"g": _scores(values)}, lambda s: rly.score_distributions(s, taus),
                                               reps=reps, confidence_interval_size=LEVEL, random_state=rng)
    return point["g"], ci["g"][0], ci["g"][1]


def profile_taus(values: Sequence[float], n: int = 51) -> np.ndarray:
    """The thresholds a profile is drawn at: from just below the lowest score to the highest."""
    low, high = float(np.min(values)), float(np.max(values))
    pad = 1e-6 * max(1.0, abs(low), abs(high))
    return np.linspace(low - pad, high, n)


def resolve_group(name: str, labels: Sequence[str], settings: Sequence[Sequence[str]] = ()) -> str:
    """The group label ``name`` names: an exact label, else the only group each of whose comma-separated parts is in
    its label or in one of its ``settings`` (its ``key=value`` for each config key that differs between the groups).
    So ``"algo.sharing=none, parameter_sharing=false"`` names the group holding both, whatever else it holds and in
    whatever order, whether the table labels the groups by those keys or by their Hydra overrides (``algo=qmix``).
    UserError otherwise."""
    if name in labels:
        return name
    parts = [part.strip() for part in name.split(",") if part.strip()]
    settings = settings or [()] * len(labels)
    matches = [label for label, own in zip(labels, settings)
               if parts and all(part in label or any(part in setting for setting in own) for part in parts)]
    if len(matches) == 1:
        return matches[0]
    shown = "; ".join(repr(label) for label in labels)
    if not matches:
        raise UserError(f"--compare: no group is named {name!r}; the groups are: {shown}")
    raise UserError(f"--compare: {name!r} names {len(matches)} groups ({'; '.join(map(repr, matches))}); "
                    "give more of the label")
