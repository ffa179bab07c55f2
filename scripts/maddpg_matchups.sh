#!/usr/bin/env bash
# MADDPG's physical-deception match-ups (Lowe et al., NeurIPS 2017) on mpe2 simple_adversary in the paper's action
# semantics (experiment=maddpg_adversary_gumbel): MADDPG everywhere, a DDPG adversary against MADDPG good agents, DDPG
# good agents against a MADDPG adversary, and DDPG everywhere; 3 seeds each at 450k env steps (18k episodes: the
# paper's 60k episodes do not fit a session on a 2-core CPU, and the success rates have settled by then), then one
# report of each team's return, success rate and final distance. About 6 minutes per run on one core, 12 runs.
#   scripts/maddpg_matchups.sh [OUT_DIR] [HYDRA OVERRIDES...]
#   EXPERIMENT=maddpg_adversary scripts/maddpg_matchups.sh outputs/paper/maddpg_discrete total_steps=150000  (mpe2's discrete moves)
set -euo pipefail
out=${1:-outputs/paper/maddpg_matchups}
shift || true   # the rest of the arguments: Hydra overrides added to every sweep (e.g. total_steps=50000)
experiment=${EXPERIMENT:-maddpg_adversary_gumbel}
status=0
launcher=${LAUNCHER:-hydra/launcher=joblib hydra.launcher.n_jobs=2}
marlrun train -m experiment=$experiment total_steps=450000 'algo.ddpg_teams=[],[adversary],[good]' seed=0,1,2 $launcher \
  hardware.torch_threads=1 hydra.sweep.dir="$out/critic_maddpg" "$@" || status=$?
marlrun train -m experiment=$experiment total_steps=450000 algo.critic=ddpg seed=0,1,2 $launcher \
  hardware.torch_threads=1 hydra.sweep.dir="$out/critic_ddpg" "$@" || status=$?
marlrun report "$out" --metric eval/game/good_success --metric eval/game/adversary_success \
  --metric eval/game/good_final_distance --metric eval/game/adversary_final_distance \
  --metric eval/team_return/good --metric eval/team_return/adversary
exit $status
