#!/usr/bin/env bash
# Replayed-forward overhead of two code trees, same GPU session, one process each, alternately (issue 5,
# BENCHMARKS.md energy run 15). Run from the repository root on the GPU machine, after gpu_session.sh (PARTS=none)
# installed the wheels into /tmp/site. OLD: a tree of the code to compare against, made here before the device call
# (it must be an untracked, not ignored folder to be carried), e.g.
#   mkdir ab_old && git archive <rev> neurosim encoders models hardware benchmarks | tar -x -C ab_old
# NEW (default: this tree). BACKENDS, REPS (alternations, default 3), ROUNDS (default 10), PIN (e.g. "taskset -c 3"),
# WHAT (replayed, the default, or profile: a one-shot profile each time), CASES (models of energy_overhead.cases, one
# a line; default: the attention block, the Spikformer at batch 64 and the EST).
set -uo pipefail
OLD=${OLD:?set OLD to a code tree}
NEW=${NEW:-$PWD}
for code in old new; do
  src=$OLD; [[ $code == new ]] && src=$NEW
  rm -rf "/tmp/ab_$code" && mkdir -p "/tmp/ab_$code"
  cp -r "$src/neurosim" "/tmp/ab_$code/neurosim"
  for d in encoders models hardware; do cp -r "$src/$d" "/tmp/ab_$code/neurosim/$d"; done
  cp -r "$src/benchmarks" "/tmp/ab_$code/"
  cp "$NEW/benchmarks/replay_overhead.py" "/tmp/ab_$code/benchmarks/"  # (the same measurement for both)
done
for b in ${BACKENDS:-fused torch}; do
  while IFS= read -r c; do
    [[ -n $c ]] || continue
    for rep in $(seq "${REPS:-3}"); do
      for code in old new; do
        (cd "/tmp/ab_$code" && PYTHONPATH="/tmp/ab_$code:/tmp/site" timeout 120 ${PIN:-} python3 \
          benchmarks/replay_overhead.py --backend "$b" --case "$c" --tag "$code" --rounds "${ROUNDS:-10}" \
          --what "${WHAT:-replayed}" < /dev/null 2>&1 | grep RESULT)
      done
    done
  done <<< "${CASES:-spiking attention block
Spikformer 4x384
EST 4x384}"
done
