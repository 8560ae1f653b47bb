#!/usr/bin/env bash
# Run HERE (the CPU machine), before a device call: downloads the cp312 wheels that the device image
# (Python 3.12, jax 0.11 CUDA, flax, optax, orbax, chex, numpy, etils, imageio, protobuf) lacks into
# .whl/ (ignored by git), about 35 MB, inside the device tool's 64 MiB carry limit.
# Usage: bash experiments/device/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir -p .whl
PLAT=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLAT+=(--platform "$p")
done
# The MuJoCo pair this project pins (pyproject.toml), mujoco's own needs, MJX's trimesh, tyro's needs and
# tensorboardX. warp-lang (MJX-Warp) is left out: 149 MB does not fit the carry limit.
PKGS=(
  mujoco==4.0.0 mujoco-core==4.0.0 mujoco-studio==4.0.0 mujoco-mjx==3.17.0
  glfw pyopengl websockets trimesh
  tyro==1.0.17 docstring-parser typeguard
  tensorboardx==2.6.5
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLAT[@]}" --platform any -d .whl "${PKGS[@]}"
ls -la .whl
du -sh .whl
