"""`marlrun report DIR [DIR ...]`: compare finished runs, grouped by what differs between them, over seeds.

    marlrun report outputs/multirun/2026-11-21/10-19-27_super_ddqn_pursuit [--metric eval/episode_return]

1. find: every run folder (one with ``.hydra/config.yaml``) under the DIRs, at any depth, in job-number order;
2. load: each run's composed config, its ``metrics.jsonl`` and its ``summary.json``; what is missing, unreadable,
   unfinished or failed is noted as a problem of that run (reported, never silently dropped);
3. group: the config keys whose values differ between runs (seed and bookkeeping keys aside) define the groups,
   so the runs of a group differ only by seed;
4. statistics per run on a metric's (step, value) series: final value, AUC (area under the curve over the step
   span: the mean value over training) and the first step at which the value reaches a threshold; per group the
   mean of each and a 95% percentile bootstrap confidence interval over seeds;
5. the statistics the evaluation literature asks for (Agarwal et al., 2021), computed by ``rliable``
   (``marlrun/report/reliable.py``): each group's interquartile mean of the final values and of the AUCs with stratified
   bootstrap intervals; P(A > B) for the pairs named with ``--compare A B``; and the first metric's performance
   profile (the fraction of each group's runs whose final value exceeds tau);
6. output: a table on the console, ``report.csv`` (one row per group and metric), ``runs.csv`` (one row per run and
   metric), one ``curves_<metric>.png`` per metric with each group's mean curve and 95% bootstrap band,
   ``improvement.csv`` (the compared pairs), ``profile.csv`` and ``profile_<metric>.png``.

Stages by module: ``runs`` (find, load, group), ``stats`` (statistics), ``output`` (tables, CSVs, plots) and ``cli``
(the command line, ``main``).
"""

from marlrun.report.cli import main
from marlrun.report.runs import differing_keys, find_runs, group_runs, load_config, load_run, load_runs
from marlrun.report.stats import analyse, auc, bootstrap_ci, mean_curve, steps_to_threshold

__all__ = ["main", "differing_keys", "find_runs", "group_runs", "load_config", "load_run", "load_runs", "analyse", "auc",
           "bootstrap_ci", "mean_curve", "steps_to_threshold"]
