#!/bin/bash
# Rebuild the reports of the distributional-critic comparison from the committed logs (run from anywhere).
#   bash docs/results/distributional/report.sh
set -e
cd "$(dirname "$0")"
mean='algo.critic_distribution=mean'
marlrun report mappo_pursuit --ignore hardware --out report_mappo_pursuit \
    --label "$mean=MAPPO, mean critic" --label "algo.critic_distribution=gmac=MAPPO, GMAC critic" --compare GMAC mean
marlrun report mappo_adversary --ignore hardware --out report_mappo_adversary \
    --metric eval/game/good_success --metric eval/game/adversary_success --metric eval/episode_return \
    --label "$mean=MAPPO, mean critic" --label "algo.critic_distribution=gmac=MAPPO, GMAC critic" --compare GMAC mean
marlrun report ippo_adversary --ignore hardware --out report_ippo_adversary \
    --metric eval/game/good_success --metric eval/game/adversary_success --metric eval/episode_return \
    --label "$mean=IPPO, mean critic" --label "algo.critic_distribution=gmac=IPPO, GMAC critic" --compare GMAC mean
for budget in maddpg_adversary_150k maddpg_adversary_600k; do
    [ -d "$budget" ] || continue
    marlrun report "$budget" --ignore hardware --ignore total_steps --ignore checkpoint_interval --out "report_$budget" \
        --metric eval/game/good_success --metric eval/game/adversary_success --metric eval/episode_return \
        --label "$mean=MADDPG, mean critic" --label "algo.critic_distribution=mixture=MADDPG, mixture critic" --compare mixture mean
done
if [ -d mappo_battle ]; then
    marlrun report mappo_battle --ignore hardware --ignore eval_interval --out report_mappo_battle \
        --metric eval/game/red_win --metric eval/game/red_kills --metric train/episode_return \
        --label "$mean=MAPPO, mean critic" --label "algo.critic_distribution=gmac=MAPPO, GMAC critic" --compare GMAC mean
fi
