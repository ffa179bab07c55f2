#!/usr/bin/env bash
# SUPER's headline comparison on pursuit at the paper's scale (experiment=super_pursuit: 8 pursuers, 30 evaders, 16x16,
# 800k env steps, 20 greedy evaluation episodes every 4,000 steps): independent DDQN (sharing none), sharing
# everything (all), the three heuristics at bandwidth 0.1 (quantile, gaussian, stochastic), parameter sharing and
# QMIX (algo=qmix, pymarl's settings on the same network), 3 seeds each: the paper's 21 runs; and the baselines a
# reviewer asks for: QMIX and VDN with standardised team rewards (qmix_std, vdn), IPPO and MAPPO on their preset
# (experiment=ppo_pursuit, same budget and evaluation schedule; evaluated with the policy's own samples, and as
# ippo_greedy / mappo_greedy with its argmax): 39 runs. Meant to be run over several sittings on a small machine:
#   scripts/super_pursuit.sh [OUT_DIR] [HYDRA OVERRIDES...]
# SWEEP_GROUPS and SWEEP_SEEDS (space-separated) pick part of the sweep, for a sitting that affords only a few runs.
# Runs go to OUT_DIR/<group>/seed_<s> (default outputs/paper/super_pursuit), LANES at a time (default 2; each lane takes
# the next run of one queue: runs part-way first, then every group at seed 0, seed 1, seed 2), each with
# THREADS torch threads (default: the cores shared out between the lanes, at least one; two one-thread runs side by
# side do more updates per second than one two-thread run on a 2-core CPU, but LANES=1 finishes each run sooner, which
# counts where a sitting is shorter than two one-thread runs). A run whose summary.json says "finished" is skipped,
# one with a checkpoint is resumed, so the same command continues an interrupted sweep. SWEEP_STOP_AT (a time `date -d`
# reads: "now + 170 minutes", "tomorrow 00:25") ends a sitting there: each run going then gets SIGTERM, saves a checkpoint and
# stops, no run starts after it, and the next sitting's same command resumes them (a run split over sittings draws
# fresh training episodes after the resume, as any resumed run does). Every finished run's metrics.jsonl, summary.json and .hydra/ are copied to
# RESULTS (default docs/results/super_pursuit/<group>/seed_<s>), checkpoints excepted, and the report is rebuilt there;
# a run already finished there (an earlier sitting's, committed) is not run again. RESULTS/sweep_summary.json lists every
# planned run, finished or not, and the sweep's wall time summed over the sittings (scripts/sweep_status.py).
# IPPO and MAPPO take 3-6 minutes per run. About 70-90 minutes per DQN-family run at two lanes on a 2-core AMX CPU: 21 runs take about 14 hours; 71-87 minutes per run at two
# lanes on a 2-core AMD EPYC (bf16). On a 2-core Intel CPU without AMX (fp32): 2.6 hours per run at two one-thread
# lanes, about 1.7 hours at LANES=1 with two threads.
set -euo pipefail   # a failed run is logged and the lanes go on (every marlrun call has its || handler)
out=${1:-outputs/paper/super_pursuit}
shift || true
results=${RESULTS:-docs/results/super_pursuit}
lanes=${LANES:-2}
threads=${THREADS:-$(( $(nproc) / lanes > 0 ? $(nproc) / lanes : 1 ))}
plan_groups="none all quantile gaussian stochastic parameter_sharing qmix qmix_std vdn ippo mappo ippo_greedy mappo_greedy" plan_seeds="0 1 2"   # the whole sweep
read -r -a groups <<< "${SWEEP_GROUPS:-$plan_groups}"
read -r -a seeds <<< "${SWEEP_SEEDS:-$plan_seeds}"

overrides_of() {  # the group's overrides, its experiment preset first
  case $1 in
    parameter_sharing) echo "experiment=super_pursuit algo.sharing=none algo.parameter_sharing=true" ;;
    qmix) echo "experiment=super_pursuit algo=qmix" ;;
    qmix_std) echo "experiment=super_pursuit algo=qmix algo.standardise_rewards=true" ;;
    vdn) echo "experiment=super_pursuit algo=qmix algo.mixer=vdn algo.standardise_rewards=true" ;;
    # PPO: its own preset (16 copies x 128 steps per update), evaluated on the paper's protocol (20 episodes every
    # 4,000 env steps; the preset's evaluation samples from the policy, see conf/experiment/ppo_pursuit.yaml)
    ippo|mappo) echo "experiment=ppo_pursuit algo=$1 eval_interval=4000 eval_episodes=20 log_interval=4096 checkpoint_interval=100000" ;;
    # the same training (evaluation draws its own random numbers), evaluated greedily (argmax) as the DQN groups are
    ippo_greedy|mappo_greedy) echo "experiment=ppo_pursuit algo=${1%_greedy} algo.greedy_eval=true eval_interval=4000 eval_episodes=20 log_interval=4096 checkpoint_interval=100000" ;;
    *) echo "experiment=super_pursuit algo.sharing=$1" ;;
  esac
}

finished() { grep -q '"status": "finished"' "$1/summary.json" 2>/dev/null; }

stop_at=""
if [[ -n ${SWEEP_STOP_AT:-} ]]; then
  stop_at=$(date -d "$SWEEP_STOP_AT" +%s 2>/dev/null) || { echo "error: SWEEP_STOP_AT=$SWEEP_STOP_AT is not a time date -d reads" >&2; exit 2; }
  if (( stop_at <= $(date +%s) )); then
    echo "error: SWEEP_STOP_AT=$SWEEP_STOP_AT is $(date -d "@$stop_at"), in the past; give the day too (\"tomorrow 00:25\") or \"now + N minutes\"" >&2
    exit 2
  fi
fi
seconds_left() { echo $(( stop_at - $(date +%s) )); }

until_stop() {  # the command, sent SIGTERM at SWEEP_STOP_AT (the run saves a checkpoint and exits; timeout says 124)
  if [[ -z $stop_at ]]; then "$@"; return; fi
  local rc=0 left
  left=$(seconds_left)
  (( left > 0 )) || return 0   # (timeout 0 would never stop it)
  timeout --signal=TERM "$left" "$@" || rc=$?
  (( rc == 124 )) || return $rc
}

run_one() {  # group seed
  local dir="$out/$1/seed_$2" keep="$results/$1/seed_$2" log="$out/logs/$1_seed_$2.log"
  if finished "$keep" && ! finished "$dir"; then return; fi   # finished in an earlier sitting, its logs committed
  if [[ -n $stop_at ]] && ! finished "$dir" && (( $(seconds_left) <= 0 )); then return; fi   # the sitting is over
  if finished "$dir"; then :
  elif ls "$dir"/checkpoints/step_*.pt > /dev/null 2>&1; then
    until_stop marlrun train resume="$dir" progress=false >> "$log" 2>&1 || echo "$1 seed $2: resume failed, see $log" >> "$out/errors.log"
  else
    rm -rf "$dir"
    # shellcheck disable=SC2046
    until_stop marlrun train $(overrides_of "$1") seed="$2" hardware.torch_threads="$threads" progress=false \
      hydra.run.dir="$dir" "${extra[@]}" > "$log" 2>&1 || echo "$1 seed $2: failed, see $log" >> "$out/errors.log"
  fi
  if finished "$dir"; then
    mkdir -p "$keep"
    cp "$dir/metrics.jsonl" "$dir/summary.json" "$keep/" && cp -r "$dir/.hydra" "$keep/"
  fi
}

# One queue for all the lanes, so that no lane idles while runs are left (finished runs are skipped at once): the runs
# part-way (a checkpoint in OUT_DIR, not finished) first, then every group at seed 0, then seed 1, then seed 2.
queue_dir=$(mktemp -d)
trap 'rm -rf "$queue_dir"' EXIT
part_way=() rest=()
for seed in "${seeds[@]}"; do
  for group in "${groups[@]}"; do
    dir="$out/$group/seed_$seed"
    if ! finished "$results/$group/seed_$seed" && ! finished "$dir" && compgen -G "$dir/checkpoints/step_*.pt" > /dev/null; then
      part_way+=("$group $seed")
    else
      rest+=("$group $seed")
    fi
  done
done
printf '%s\n' "${part_way[@]}" "${rest[@]}" > "$queue_dir/runs"
echo 0 > "$queue_dir/next"

claim() {  # prints the queue's next run ("group seed"), nothing once it is empty; one lane at a time (mkdir is atomic)
  until mkdir "$queue_dir/lock" 2> /dev/null; do sleep 0.2; done
  local i
  i=$(< "$queue_dir/next")
  echo $((i + 1)) > "$queue_dir/next"
  rmdir "$queue_dir/lock"
  sed -n "$((i + 1))p" "$queue_dir/runs"
}

lane() {  # runs the queue's next run until none is left
  local run
  while run=$(claim) && [[ -n $run ]]; do
    # shellcheck disable=SC2086
    run_one $run
  done
}

extra=("$@")
mkdir -p "$out/logs"
for ((l = 0; l < lanes; l++)); do lane & done
wait
# runs of one group may differ in their hardware (threads; the precision hardware=auto resolved to on each host)
compare=()   # P(quantile > B) for each baseline B with finished runs so far (a group with none is no group yet)
# (labels by parts: "algo.sharing=none" alone names independent DDQN and parameter sharing both)
for pair in "none algo.sharing=none,parameter_sharing=false" "all algo.sharing=all" \
            "parameter_sharing algo.sharing=none,parameter_sharing=true" "qmix experiment=super_pursuit, algo=qmix" \
            "qmix_std standardise_rewards=true,mixer=qmix" "vdn mixer=vdn" "ippo algo=ippo,greedy_eval=false" \
            "mappo algo=mappo,greedy_eval=false"; do
  read -r group label <<< "$pair"
  if [[ -d $results/quantile && -d $results/$group ]]; then compare+=(--compare quantile "$label"); fi
done
names=()   # each group under a name a reader knows (--label), for the groups with finished runs
for pair in "none|algo.sharing=none,parameter_sharing=false|independent DDQN" "all|algo.sharing=all|share all" \
            "quantile|algo.sharing=quantile|SUPER quantile" "gaussian|algo.sharing=gaussian|SUPER gaussian" \
            "stochastic|algo.sharing=stochastic|SUPER stochastic" "parameter_sharing|algo.sharing=none,parameter_sharing=true|parameter sharing" \
            "qmix|experiment=super_pursuit, algo=qmix|QMIX (paper's settings)" "qmix_std|standardise_rewards=true,mixer=qmix|QMIX, standardised rewards" \
            "vdn|mixer=vdn|VDN, standardised rewards" "ippo|algo=ippo,greedy_eval=false|IPPO" "mappo|algo=mappo,greedy_eval=false|MAPPO" \
            "ippo_greedy|algo=ippo,greedy_eval=true|IPPO, greedy evaluation" "mappo_greedy|algo=mappo,greedy_eval=true|MAPPO, greedy evaluation"; do
  IFS='|' read -r group label name <<< "$pair"
  if [[ -d $results/$group ]]; then names+=(--label "$label=$name"); fi
done
if ! compgen -G "$results/*/seed_*/summary.json" > /dev/null; then   # no run finished yet: nothing to report
  mkdir -p "$results"
  python "$(dirname "$0")/sweep_status.py" "$results" "$plan_groups" "$plan_seeds"
  exit 0
fi
marlrun report "$results" --ignore hardware --metric eval/episode_return --metric train/episode_return \
  --metric sharing/fraction "${names[@]}" "${compare[@]}"
python "$(dirname "$0")/sweep_status.py" "$results" "$plan_groups" "$plan_seeds"   # the whole plan, not this sitting's part
