#!/usr/bin/env bash
# The main job: create the environment, train a spiking MLP on scikit-learn's digits through the trainer,
# report its SynOps/energy per layer, and export it to Lava-DL NetX. Extra arguments go to `neurosim demo`
# (e.g. --epochs 5 --device cuda). Outputs: $NEUROSIM_DEMO_OUT (default runs/demo).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/env.sh"
cd "$ROOT"
OUT="${NEUROSIM_DEMO_OUT:-runs/demo}"
NS="$ROOT/.venv/bin/neurosim"
# reset=zero: the neuron mode Loihi/Lava implement, so the trained network exports unchanged.
"$NS" demo --out-dir "$OUT" --opt reset=zero "$@"
echo
"$NS" energy "$OUT/checkpoints/best.pt" --csv "$OUT/energy.csv" --json "$OUT/energy.json" --plot "$OUT/energy.png"
echo
"$NS" export "$OUT/checkpoints/best.pt" --format lava --out "$OUT/digits_netx.net"
echo "neurosim demo: Lava-DL NetX network written to $OUT/digits_netx.net"
echo "  (run it on Lava's Loihi simulator with neurosim.hardware.run_lava; scripts/lava_env.sh makes that environment)"
