#!/usr/bin/env bash
# Gather what a bare GPU machine needs to run tools/gpu_checks.sh, into .device/ (git-ignored).
#
# The GPU machines this project borrows have Python 3.12 with CUDA PyTorch, transformers, peft,
# typer, rich, safetensors, tokenizers… but no network and not all of our dependencies. This
# downloads the missing ones as Python 3.12 wheels (pure Python or manylinux x86-64) and copies the
# reference text (`../shared/data/tinyshakespeare.txt`) beside them. Carry `.device` to the machine
# and run `bash tools/gpu_checks.sh STAGE` there (see benchmarks/README.md, "On a GPU machine").
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device/wheels .device/data
# pydantic and tomli-w are ours, the rest pydantic's needs; the versions our venv runs (pydantic
# pins pydantic_core exactly, so they must come as a pair).
py=${PYTHON:-.venv/bin/python}
pins=$("$py" -c "import importlib.metadata as m
print(' '.join(f'{n}=={m.version(n)}' for n in ('pydantic', 'pydantic_core', 'typing-inspection', 'annotated-types', 'tomli-w')))")
# shellcheck disable=SC2086  # one word per pin
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .device/wheels \
    $pins
data=${SHAKESPEARE:-../shared/data/tinyshakespeare.txt}
if [[ -f "$data" ]]; then
    cp "$data" .device/data/tinyshakespeare.txt
else
    echo "note: $data not found; the shakespeare stages will need --data on the machine" >&2
fi
du -sh .device
