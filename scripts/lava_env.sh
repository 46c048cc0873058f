#!/usr/bin/env bash
# Create (or verify) the Lava environment neurosim.hardware.run_lava drives as a subprocess.
# lava-dl 0.6.0 / lava-nc 0.10.0 need Python 3.10 exactly (torch<2.4, numpy<2), so they cannot share the
# main environment.   NEUROSIM_LAVA_VENV: where (default <repo>/.venv-lava);  PYTHON310: the interpreter.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NEUROSIM_LAVA_VENV:-$ROOT/.venv-lava}"
stamp="$VENV/.neurosim-lava-stamp"
want="lava-dl==0.6.0 lava-nc==0.10.0"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then exit 0; fi

PY=""
for c in "${PYTHON310:-}" python3.10 /root/.pyenv/versions/3.10.13/bin/python; do
  [ -n "$c" ] || continue
  command -v "$c" >/dev/null 2>&1 || continue
  if "$c" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' 2>/dev/null; then PY="$c"; break; fi
done
if [ -z "$PY" ]; then
  echo "neurosim: the Lava environment needs Python 3.10 exactly (set PYTHON310=/path/to/python3.10)" >&2
  exit 1
fi
echo "neurosim: creating the Lava environment in $VENV (lava-dl 0.6.0; a few minutes, several GB)" >&2
rm -rf "$VENV"
"$PY" -m venv "$VENV"
# (not -q: each "Collecting"/"Downloading ... (size)" line shows the progress; no progress bar, the output may be a pipe)
"$VENV/bin/python" -m pip install --progress-bar off --disable-pip-version-check "lava-dl==0.6.0" "lava-nc==0.10.0" "h5py"
"$VENV/bin/python" -c 'import lava.lib.dl.netx, lava.proc.lif.process' 
echo "$want" > "$stamp"
