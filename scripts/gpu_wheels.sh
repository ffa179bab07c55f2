#!/usr/bin/env bash
# Wheels of the packages a bare CUDA machine lacks, for scripts/gpu_check.sh, into WHEELS (default .whl/, git-ignored).
# Run it here, where PyPI can be reached, for the GPU machine's Python (default 3.12, x86-64 Linux); the GPU machine
# then installs them with no network (pip --no-index). Packages that GPU images usually ship already (torch, numpy,
# scipy, pandas, matplotlib, tensorboard, rich, pytest, pytest-xdist) are left out; add them with EXTRA="name==ver ...".
#   scripts/gpu_wheels.sh                 # then: scripts/gpu_check.sh on the GPU machine, with .whl/ beside it
# About 17 MB. Versions are the ones pyproject.toml admits and the CPU install resolves today.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${WHEELS:-.whl}
py=${PYVER:-3.12}
mkdir -p "$out"
binary=(hydra-core==1.3.8 omegaconf==2.3.1 pettingzoo==1.27.0 gymnasium==1.4.0 Farama-Notifications==0.0.6 mpe2==1.1.1
        magent2==0.3.4 SuperSuit==3.11.0 tinyscaler==1.2.8 pygame-ce==2.5.8 arch==7.2.0 hydra-joblib-launcher==1.2.0)
read -r -a extra <<< "${EXTRA:-}"
platforms=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do platforms+=(--platform "${p}_x86_64"); done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" --implementation cp "${platforms[@]}" \
  -d "$out" "${binary[@]}" "${extra[@]}"
# published as source only (pure Python): built here into py3-none-any wheels
python3 -m pip wheel --quiet --no-deps -w "$out" antlr4-python3-runtime==4.9.3 rliable==1.2.0
ls "$out"
du -sh "$out"
