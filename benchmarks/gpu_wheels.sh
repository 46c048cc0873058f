#!/usr/bin/env bash
# Source this on the GPU machine (no network there): installs, from the wheels in $WHEELS, only the packages
# that its image lacks (scikit-learn for the digits data set, matplotlib for plots, pytest) into /tmp/site2 and
# puts that on PYTHONPATH. Wheels for Python 3.12 / manylinux: pip download --only-binary=:all: --no-deps
# --python-version 3.12 --platform manylinux2014_x86_64 -d $WHEELS <the names below>.
if [ -n "${WHEELS:-}" ]; then
  missing=$(python3 - <<'PY'
import importlib.util
pairs = [("sklearn", "scikit_learn"), ("threadpoolctl", "threadpoolctl"), ("joblib", "joblib"),
         ("matplotlib", "matplotlib"), ("contourpy", "contourpy"), ("cycler", "cycler"), ("fontTools", "fonttools"),
         ("kiwisolver", "kiwisolver"), ("pyparsing", "pyparsing"), ("dateutil", "python_dateutil"),
         ("pytest", "pytest"), ("pluggy", "pluggy"), ("iniconfig", "iniconfig")]
print(" ".join(d for m, d in pairs if importlib.util.find_spec(m) is None))
PY
)
  echo "installing from carried wheels: ${missing:-nothing}"
  for d in $missing; do python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site2 "$WHEELS"/$d-*.whl; done
  export PYTHONPATH="/tmp/site2:${PYTHONPATH:-}"
fi
