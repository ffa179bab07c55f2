#!/usr/bin/env bash
# MF-Q on the 2D Ising model (Yang et al., ICML 2018, section 5.1): the order parameter against temperature,
# 10 temperatures x 3 seeds (experiment=mfq_ising_sweep, the paper's 10x10 setting), then the report (one group per
# temperature). MF-Q beside MCMC: scripts/mcmc_vs_mfq_ising.sh.
# About 20 minutes on a 2-core CPU with two jobs at a time.
set -euo pipefail
out=${1:-outputs/paper/mfq_ising_temperature}
shift || true   # the rest of the arguments: Hydra overrides added to every sweep (e.g. total_steps=50000)
status=0
marlrun train -m experiment=mfq_ising_sweep ${LAUNCHER:-hydra/launcher=joblib hydra.launcher.n_jobs=2} \
  hydra.sweep.dir="$out" "$@" || status=$?
marlrun report "$out" --metric eval/game/xi --metric env/xi --metric env/energy_per_spin
exit $status
