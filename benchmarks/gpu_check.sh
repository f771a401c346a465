#!/usr/bin/env bash
# The CUDA benchmarks at Mistral-7B shape in one command, on a machine with an NVIDIA GPU and no network:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default OUT_DIR: benchmarks/gpu-results)
#
# Needs torch with CUDA, transformers, peft and bitsandbytes; Unsloth (the [gpu] extra) adds its training row.
# Makes a random Mistral-7B-shaped checkpoint once (14.5 GB, $STARGATE_BENCH_CHECKPOINT, default
# /tmp/stargate-mistral-7b-shape), runs bench_scorer, bench_generate and bench_train at that shape (each
# writes OUT_DIR/NAME.json and NAME.log), checks that rloo's first step is on policy in bf16 (first_step_check.py),
# then prints one summary table against the performance targets. Each script runs as `python -m benchmarks.NAME`
# from the repository's root.
# BENCHES="scorer generate" runs some of them; BENCH_LIMIT (seconds, default 300) bounds each.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/gpu-results}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
start=$(date +%s)

benches=${BENCHES:-scorer generate train}
if [[ " $benches " == *" scorer "* || " $benches " == *" train "* ]]; then  # generate builds its model in memory
  "$py" -c "from benchmarks.shapes import mistral_checkpoint; mistral_checkpoint()" \
    || { echo "could not make the random checkpoint"; exit 1; }
  echo "checkpoint ready after $(( $(date +%s) - start )) s"
fi

bench() {
  local name=$1; shift
  timeout "${BENCH_LIMIT:-300}" "$py" -m "benchmarks.bench_$name" --shape mistral-7b --json "$@" \
    >"$out/$name.json" 2>"$out/$name.log" || echo "bench_$name failed (exit $?): see $out/$name.log"
  echo "bench_$name done after $(( $(date +%s) - start )) s"
}
for name in $benches; do
  case $name in scorer) bench scorer --repeats 3 ;; *) bench "$name" ;; esac
done

# Not a timing: rloo's first step on policy in bf16 autocast (ratios 1, KL 0); exit 1 and its figures if not.
"$py" -m benchmarks.first_step_check >"$out/first_step.json" 2>"$out/first_step.log" \
  && echo "first_step_check passed: $(cat "$out/first_step.json")" \
  || echo "first_step_check FAILED: $(cat "$out/first_step.json") (see $out/first_step.log)"

"$py" -m benchmarks.gpu_summary "$out"
echo "total $(( $(date +%s) - start )) s"
