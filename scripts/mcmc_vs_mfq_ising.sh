#!/usr/bin/env bash
# MF-Q against MCMC on the 2D Ising model (Yang et al., ICML 2018, section 5.1): the order parameter xi against the
# temperature tau, on the paper's 10x10 torus and on 32x32, 3 seeds each.
#   mcmc:              experiment=mcmc_ising, heat-bath checkerboard sweeps (the physics, T = 2 tau)
#   mcmc_synchronous:  the same heat bath with every spin redrawn at once from the old lattice (what a Boltzmann policy
#                      on the immediate reward does when all agents move together; not a valid sampler), on SYNC_SIZES
#   mfq:               experiment=mfq_ising (the paper's setting), then Q(up) - Q(down) of every run against the
#                      number of up neighbours (scripts/ising_q_differences.py, written to mfq/q_differences.csv)
# Every run is one episode of STEPS lattice steps (default 3000; the presets' 10,000 is the paper's longest run, which
# stopped early once the order parameter settled) and is evaluated on 8 fresh lattices over as many steps;
# then one report per sweep (eval/game/xi: 8 fresh lattices at the end; env/xi: the training lattice, averaged over
# the last log interval) and the table and plot of xi against tau (scripts/ising_xi_table.py).
# About 30 minutes of one core, one job at a time (MF-Q runs 16-43 s, MCMC runs 2-14 s; 45 minutes of wall time on
# a shared 2-core machine).
#   scripts/mcmc_vs_mfq_ising.sh [OUT_DIR] [HYDRA OVERRIDES FOR EVERY SWEEP...]
# TEMPS, SIZES, SYNC_SIZES, SEEDS, STEPS change the grid; LAUNCHER the Hydra launcher (default: one job at a time).
set -euo pipefail
out=${1:-outputs/paper/mcmc_vs_mfq_ising}
shift || true   # the rest of the arguments: Hydra overrides added to every sweep
temps=${TEMPS:-0.6,0.8,1.0,1.1,1.2,1.4,1.6,1.8,2.0,2.4}
sizes=${SIZES:-10,32}
seeds=${SEEDS:-0,1,2}
sync_sizes=${SYNC_SIZES:-10}
steps=${STEPS:-3000}
run=(total_steps="$steps" env.max_cycles="$steps" checkpoint_interval="$steps" algo.temperature="$temps" seed="$seeds"
     hardware.torch_threads=1 progress=false print_config=false)
status=0
marlrun train -m experiment=mcmc_ising env.L="$sizes" "${run[@]}" ${LAUNCHER:-} hydra.sweep.dir="$out/mcmc" "$@" || status=$?
marlrun train -m experiment=mcmc_ising algo.scan=synchronous env.L="$sync_sizes" "${run[@]}" ${LAUNCHER:-} \
  hydra.sweep.dir="$out/mcmc_synchronous" "$@" || status=$?
marlrun train -m experiment=mfq_ising env.L="$sizes" "${run[@]}" ${LAUNCHER:-} hydra.sweep.dir="$out/mfq" "$@" || status=$?
python "$(dirname "$0")/ising_q_differences.py" "$out/mfq" --csv "$out/mfq/q_differences.csv" || status=$?
for name in mcmc mcmc_synchronous mfq; do
  marlrun report "$out/$name" --metric eval/game/xi --metric env/xi --metric env/energy_per_spin --ignore hardware --no-plots
done
python "$(dirname "$0")/ising_xi_table.py" "$out"
exit $status
