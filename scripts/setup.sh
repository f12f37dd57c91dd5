#!/usr/bin/env bash
# One-time, idempotent set-up of a fresh checkout: a virtual environment in .venv with PyTorch, the
# package (editable) and its test tools, and CIFAR-10 in data/ when the workplace's shared copy is beside
# the checkout (elsewhere `cnn-aliasing measure --download` fetches the official archive).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_PIN="${CNN_ALIASING_TORCH:-torch==2.13.0}"   # CPU build here; set e.g. CNN_ALIASING_TORCH=torch for CUDA

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check "$TORCH_PIN"
fi
# (re)install the package and its dependencies whenever pyproject.toml changed since the last install
STAMP=.venv/.pyproject.sha256
if ! sha256sum --status -c "$STAMP" 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
    sha256sum pyproject.toml > "$STAMP"
fi
if [ ! -f data/cifar-10-batches-py/batches.meta ] && [ -f ../shared/data/make_cifar10.py ]; then
    .venv/bin/python ../shared/data/make_cifar10.py data
fi
