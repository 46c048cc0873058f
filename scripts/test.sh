#!/usr/bin/env bash
# The test suite: create the main environment with the test extras and the Lava environment, then run pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/test_neurons.py -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NEUROSIM_DEV=1 bash "$ROOT/scripts/env.sh"
bash "$ROOT/scripts/lava_env.sh"
cd "$ROOT"
set +e
"$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider "${@:-tests}"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "neurosim: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
