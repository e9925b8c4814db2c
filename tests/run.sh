#!/usr/bin/env bash
# Installs the test environment into .venv (first run, or when the requirements change) and runs
# the whole suite. Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP="$VENV/.asag-env"
WANT=$(cat tests/run.sh tests/requirements.txt | sha256sum | cut -c1-16)

if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  rm -rf "$VENV"
  python3.11 -m venv "$VENV"
  PIP="$VENV/bin/python -m pip install --quiet --disable-pip-version-check"
  # torch first, pinned: anything that asks for torchvision or a newer torch would otherwise pull a
  # CUDA build of several GB. This pair is the one pip takes from local disk on these machines
  # (k-diffusion imports torchvision, so the CPU-only torch 2.13.0 file will not do).
  $PIP torch==2.14.1 torchvision==0.29.1
  $PIP --no-deps k-diffusion==0.1.1.post1 stable-diffusion-sdkit==2.1.5
  $PIP -r tests/requirements.txt
  "$VENV/bin/python" -c "import torch, sys; v = torch.__version__; print('torch', v); sys.exit(v.split('+')[0] != '2.14.1')"
  echo "$WANT" > "$STAMP"
fi

exec "$VENV/bin/python" -m pytest "$@"
