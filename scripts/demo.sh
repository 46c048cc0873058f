#!/usr/bin/env bash
# The main job: create the environment, train a spiking network on scikit-learn's digits, report accuracy
# (and energy / export where available) and say where the outputs went. Extra arguments go to the demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" examples/digits_demo.py "$@"
