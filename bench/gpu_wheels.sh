#!/usr/bin/env bash
# Fetch, here (with network), the wheels bench/gpu_check.sh installs on a GPU machine without
# network: our pinned packages that its image lacks or has at another version (its image has
# torch, accelerate, safetensors, sentencepiece, numpy, pandas, pyarrow, scikit-learn, matplotlib).
#   bash bench/gpu_wheels.sh      # -> .whl/ (git-ignored), then carry .whl with the run
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
mkdir -p .whl
# Compiled packages: wheels for the GPU machine's Python (3.12, x86-64).
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl xxhash multiprocess dill llguidance==1.9.1
# Pure-Python packages (some ship only a source archive): built into wheels here.
$PY -m pip wheel -q --no-deps -w .whl transformers==5.23.0 datasets==5.2.0 \
  jieba==0.42.1 nltk==3.10.4 rouge-chinese==1.0.3 peft==0.21.2
# DeepSpeed (for the ZeRO step), built without its compiled ops: they are built on the GPU machine
# when first used, if it has a CUDA toolkit; without one, gpu_check.sh records the step as skipped.
DS_BUILD_OPS=0 $PY -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed || \
  echo "gpu_wheels.sh: no deepspeed wheel (the ZeRO step will be skipped)"
ls -la .whl
