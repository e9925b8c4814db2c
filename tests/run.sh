#!/usr/bin/env bash
# Installs the test environment into .venv (first run, or when the requirements change) and runs
# the whole suite. Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP="$VENV/.asag-env"
WANT=$(cat tests/run.sh tests/requirements.txt tests/requirements-ui-gradio*.txt | sha256sum | cut -c1-16)

# The UI tests (tests/ui/) drive Debian's chromium through Playwright; CI runs as root.
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  rm -rf "$VENV"
  # The UI tests' gradio venvs (A1111's 3.41.2, Forge's 4.40.0, Forge Classic's 3.43.2; no torch),
  # installed alongside.
  UI_PIDS=""
  for G in 3 4 3-classic; do
    ( rm -rf ".venv-gradio$G" && python3.11 -m venv ".venv-gradio$G" \
      && ".venv-gradio$G/bin/python" -m pip install --quiet --disable-pip-version-check -r "tests/requirements-ui-gradio$G.txt" ) &
    UI_PIDS="$UI_PIDS $!"
  done
  python3.11 -m venv "$VENV"
  PIP="$VENV/bin/python -m pip install --quiet --disable-pip-version-check"
  # torch first, pinned: anything that asks for torchvision or a newer torch would otherwise pull a
  # CUDA build of several GB. This pair is the one pip takes from local disk on these machines
  # (k-diffusion imports torchvision, so the CPU-only torch 2.13.0 file will not do).
  $PIP torch==2.14.1 torchvision==0.29.1
  $PIP --no-deps k-diffusion==0.1.1.post1 stable-diffusion-sdkit==2.1.5
  $PIP -r tests/requirements.txt
  "$VENV/bin/python" -c "import torch, sys; v = torch.__version__; print('torch', v); sys.exit(v.split('+')[0] != '2.14.1')"
  for PID in $UI_PIDS; do wait "$PID"; done
  echo "$WANT" > "$STAMP"
fi

# Two workers, each given whole files (their models and stand-ins are built once per file) and one
# torch thread, so that together they use the two cores CI has without oversubscribing them.
# Pass -n 0 to run in this process.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$VENV/bin/python" -m pytest -n 2 --dist loadfile "$@"
