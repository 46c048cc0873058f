#!/usr/bin/env bash
# Create (or bring up to date) neurosim's main virtual environment.
#   NEUROSIM_VENV  where to put it (default: <repo>/.venv)
#   PYTHON         interpreter to build it from (default: python3.11 / python3, must be >= 3.11)
#   NEUROSIM_DEV=1 also install the test/notebook extras (requirements-dev.txt)
# A torch that the chosen interpreter can already import (e.g. a CUDA build) is kept: the venv
# then sees the interpreter's site-packages and torch is not reinstalled.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NEUROSIM_VENV:-$ROOT/.venv}"

pick_python() {
  local c
  for c in "${PYTHON:-}" python3.11 python3.12 python3.13 python3 /root/.pyenv/versions/3.11.7/bin/python; do
    [ -n "$c" ] || continue
    command -v "$c" >/dev/null 2>&1 || continue
    if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  echo "neurosim: need Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PY="$(pick_python)"
  "$PY" -m venv "$VENV"
  if torch_site="$("$PY" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null)"; then
    # Works for a system, conda or virtualenv interpreter alike: the venv's own packages come first, the
    # existing torch (and only what pip then finds already there) is used from its own site directory.
    echo "neurosim: keeping the torch that $PY already has ($("$PY" -c 'import torch; print(torch.__version__)')) from $torch_site"
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$torch_site" > "$site/_neurosim_existing_torch.pth"
  fi
fi

want="$(cat "$ROOT/requirements.txt" "$ROOT/setup.py" "$0" | sha256sum | cut -c1-16)"
if [ "${NEUROSIM_DEV:-0}" = 1 ]; then want="$want-dev-$(sha256sum < "$ROOT/requirements-dev.txt" | cut -c1-16)"; fi
stamp="$VENV/.neurosim-stamp"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  if ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
    # 2.13.0 is the release this project is tested with; on this machine kind it resolves to a local CPU wheel.
    "${pip[@]}" "torch==${NEUROSIM_TORCH_VERSION:-2.13.0}"
  fi
  "${pip[@]}" -r "$ROOT/requirements.txt"
  # norse depends on torchvision, which breaks beside a CPU torch and which neurosim does not need.
  "$VENV/bin/python" -c 'import norse' >/dev/null 2>&1 || "${pip[@]}" --no-deps norse==1.1.0
  if [ "${NEUROSIM_DEV:-0}" = 1 ]; then
    "${pip[@]}" -r "$ROOT/requirements-dev.txt"
    # Peer SynOps counters for the energy tests (issue 5). --no-deps: spikingjelly requires torchvision /
    # torchaudio, which break beside a CPU torch; what they import at runtime (loguru, progress) is in
    # requirements-dev.txt.
    "${pip[@]}" --no-deps spikingjelly==2.0.0 syops==0.0.5
  fi
  "${pip[@]}" --no-deps --no-build-isolation -e "$ROOT"
  echo "$want" > "$stamp"
fi
