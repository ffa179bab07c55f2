#!/usr/bin/env bash
# Does bf16 change what SUPER-DDQN learns? Quantile sharing on the small pursuit (experiment=super_heuristics_small),
# 3 seeds in fp32 and 3 in bf16, two jobs at a time, then the report (intervals of final and AUC evaluation return,
# and the fraction shared, per precision). Needs a CPU with bf16 units (AMX or AVX-512-BF16) or a GPU with bf16.
#   scripts/precision_small.sh [OUT_DIR] [HYDRA OVERRIDES...]
set -euo pipefail
out=${1:-outputs/paper/precision_small}
shift || true
status=0
marlrun train -m experiment=super_heuristics_small algo.sharing=quantile seed=0,1,2 hardware.precision=fp32,bf16 \
  ${LAUNCHER:-hydra/launcher=joblib hydra.launcher.n_jobs=2} hydra.sweep.dir="$out" "$@" || status=$?
marlrun report "$out" --metric eval/episode_return --metric sharing/fraction
exit $status
