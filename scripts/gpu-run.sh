#!/usr/bin/env bash
# The GPU benchmark (docs/BENCHMARKS.md, "A GPU target"), run on a machine with an NVIDIA GPU and
# no network: everything it needs travels in .gpu/ (wheels for the Python packages that machine
# lacks, and the llama-cpp-python 0.3.36 source trimmed to the llama.cpp tree, same commit).
#
#   scripts/gpu-run.sh start   copy the repo to /tmp, install the wheels, and start the run detached
#   scripts/gpu-run.sh wait N  wait up to N seconds for it, print progress, copy results to $OUT
#
# The run: build llama.cpp with CUDA for the target, write the synthetic Llama-3.1-8B, measure the
# GPU's memory bandwidth, `haqa deploy` (heuristic agent: tuned against Q4_K_M with default flags
# and against F16, side by side), then the search landscape when time allows.
# Rehearse on a CPU machine: TARGET=local RECIPE=synth-tiny REHEARSAL_HOME=~/.cache/haqa SKIP_LANDSCAPE=1.
# ONLY=landscape skips the deploy; LANDSCAPE_SET="knob=v1,v2 ..." narrows the landscape's grid (each
# word becomes one `--set`) and LANDSCAPE_MINUTES bounds its measuring (a resumable partial file).
# scripts/gpu-pack.sh makes .gpu/ on a machine with PyPI.
set -uo pipefail
TARGET=${TARGET:-h100-sxm-80gb}
RECIPE=${RECIPE:-synth-llama-3.1-8b}
WORK=${WORK:-/tmp/haqa-gpu}
PY=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)

case "${1:-}" in
start)
  rm -rf "$WORK" && mkdir -p "$WORK/site" "$WORK/home" "$WORK/out"
  cp -r "$here" "$WORK/repo"
  if ! "$PY" -c 'import pydantic, gguf' 2>/dev/null && ls "$here"/.gpu/whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$here"/.gpu/whl/*.whl || exit 1
  fi
  cp "$here"/.gpu/llama_cpp_python-*.tar.gz "$WORK/" 2>/dev/null || true
  cd "$WORK/repo" && setsid nohup "$WORK/repo/scripts/gpu-run.sh" run >"$WORK/run.log" 2>&1 </dev/null &
  echo "started: $WORK/run.log"
  ;;
run)
  export PYTHONPATH="$WORK/site:$WORK/repo" HAQA_HOME="${REHEARSAL_HOME:-$WORK/home}" PYTHONUNBUFFERED=1
  sdist=$(ls "$WORK"/llama_cpp_python-*.tar.gz 2>/dev/null | head -1)
  [ -n "${REHEARSAL_HOME:-}" ] && sdist=""  # a rehearsal reuses the machine's own source and toolchain
  [ -n "$sdist" ] && export HAQA_LLAMA_CPP_SDIST="$sdist"
  haqa() { "$PY" -m haqa "$@"; }
  step() { echo "=== $(date -u +%H:%M:%S) $*"; echo "$*" >"$WORK/step"; }
  t0=$(date +%s)
  step "environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv 2>&1 | tail -n +1
  "$PY" -c 'import sys, pydantic, gguf, matplotlib; print(sys.version.split()[0], pydantic.VERSION)' \
    || { echo "missing Python packages: was .gpu/ carried along?"; step "failed"; exit 1; }
  step "toolchain + synthetic model (in parallel)"
  haqa recipes fetch "$RECIPE" >"$WORK/synth.log" 2>&1 &
  synth=$!
  haqa toolchain build --target "$TARGET" 2>&1 | grep -vE "^\s*\[ *[0-9]+%\]" | tail -n 25
  wait $synth; tail -n 3 "$WORK/synth.log"
  step "GPU memory bandwidth"
  "$PY" -m haqa.benchmarks.bandwidth --gib 2 | tee "$WORK/out/bandwidth.json"
  if [ "${ONLY:-}" != landscape ]; then
    step "deploy"
    haqa deploy --target "$TARGET" --recipe "$RECIPE" --agent heuristic --out "$WORK/out/$RECIPE@$TARGET" 2>&1
    step "trials"
    haqa trials list --target "$TARGET" --recipe "$RECIPE" 2>&1 | tail -n 40
  fi
  if [ -z "${SKIP_LANDSCAPE:-}" ]; then
    step "landscape"
    sets=()
    for s in ${LANDSCAPE_SET:-}; do sets+=(--set "$s"); done
    [ -n "${LANDSCAPE_MINUTES:-}" ] && sets+=(--max-minutes "$LANDSCAPE_MINUTES")
    haqa bench landscape --target "$TARGET" --recipe "$RECIPE" "${sets[@]}" --out "$WORK/out/landscape.json" 2>&1 | tail -n 30
  fi
  echo "elapsed: $(( $(date +%s) - t0 )) s"
  step "done"
  ;;
wait)
  limit=${2:-500}
  end=$(( $(date +%s) + limit ))
  while ! grep -qxE "done|failed" "$WORK/step" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 10; done
  echo "step now: $(cat "$WORK/step" 2>/dev/null)"
  grep -vE "^\s*\[ *[0-9]+%\]|comparison round" "$WORK/run.log" | tail -n 80
  [ -f "$WORK/out/landscape.json" ] && "$PY" -c 'import collections, json, sys
d = json.load(open(sys.argv[1]))
print("landscape:", dict(collections.Counter(p["status"] for p in d["points"])), "wall_s", round(d["wall_s"]))' "$WORK/out/landscape.json"
  if [ -n "${OUT:-}" ]; then
    b="$WORK/out/$RECIPE@$TARGET"
    for f in haqa.lock.json REPORT.md pareto.png; do [ -f "$b/$f" ] && cp "$b/$f" "$OUT/"; done
    for f in bandwidth.json landscape.json; do [ -f "$WORK/out/$f" ] && cp "$WORK/out/$f" "$OUT/"; done
    gzip -c "$WORK/run.log" >"$OUT/run.log.gz"
  fi
  ;;
*)
  echo "usage: $0 start | wait SECONDS" >&2; exit 2 ;;
esac
