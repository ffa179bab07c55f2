#!/usr/bin/env bash
# MF-Q against IL on the MAgent battle grid (Yang et al., ICML 2018, section 5.3), both sides learning from scratch,
# with the sides swapped so that neither colour is favoured; 3 seeds each (experiment=mfq_vs_il), then one report
# over both sweeps (groups: which algorithm plays red). About 15-20 minutes per run on a 2-core CPU.
set -euo pipefail
out=${1:-outputs/paper/mfq_vs_il}
shift || true   # the rest of the arguments: Hydra overrides added to every sweep (e.g. total_steps=50000)
status=0
for sides in "algo.controller=mfq algo.opponent=iql" "algo.controller=iql algo.opponent=mfq"; do
  name=$(echo "$sides" | sed 's/algo.controller=\([a-z]*\) algo.opponent=\([a-z]*\)/red_\1_blue_\2/')
  marlrun train -m experiment=mfq_vs_il $sides seed=0,1,2 ${LAUNCHER:-hydra/launcher=joblib hydra.launcher.n_jobs=2} \
    hydra.sweep.dir="$out/$name" "$@" || status=$?
done
marlrun report "$out" --metric eval/game/red_win --metric eval/game/blue_win --metric eval/game/red_kills --metric eval/game/blue_kills
exit $status
