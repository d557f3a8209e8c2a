#!/usr/bin/env bash
# Wheels that benchmarks/gpu_suite.py needs on the device machine, which has no package registry: pure-Python
# wheels of the peers (torch-cka, pytorch-cka) and of Torch-Pruning (a pyprune dependency), for the device's
# Python 3.12. They go to wheelhouse/ (ignored by git); carry it with the `run` tool (carry=["wheelhouse"]) and
# install there with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site wheelhouse/*.whl
# Their own dependencies (numpy, tqdm, matplotlib, torch) are in the device's image. The versions are the ones
# pyproject.toml's `bench` extra and dependencies pin.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf wheelhouse
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d wheelhouse \
  torch-pruning==1.6.1 torch-cka==0.21 pytorch-cka==1.1.3
ls -l wheelhouse
