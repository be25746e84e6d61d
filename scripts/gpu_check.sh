#!/usr/bin/env bash
# The GPU figures docs/PERFORMANCE.md is waiting for, in one call on a lent GPU (H100/H200).
#
#   bash scripts/gpu_check.sh                  # tests, perf, cost: sized for one 10-minute call (estimated)
#   MXBENCH_GPU_STAGES="cost compile" bash ... # any of: tests perf cost compile (compile is not in the default)
#
# Runs on a bare CUDA image that has torch, transformers, pandas, matplotlib, seaborn, tqdm and
# safetensors but no network: nothing is installed, the package runs from this checkout
# (`python -m bench`), and the LM side uses `--random-lm` (the real architectures with random
# weights, since no weights can be fetched). Results go to $OUT (the device tool's folder) or
# results/perf/. SAELens is not on the image, so the peer comparison stays a CPU figure.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-results/perf}
stages=${MXBENCH_GPU_STAGES:-tests perf cost}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
status=0

note() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
run_stage() {  # name, command...: a failing stage is reported and the next one still runs
    local name=$1; shift
    note "$name"
    "$@" || { echo "stage $name failed (exit $?)"; status=1; }
}

note "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || status=1
"$python" -c 'import sys, torch, transformers
torch.cuda.is_available() or sys.exit("no CUDA GPU visible to torch " + torch.__version__)
print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__,
      "|", torch.cuda.get_device_name())' || exit 1
git rev-parse --short=12 HEAD 2>/dev/null || echo "commit: not a git checkout"

for stage in $stages; do
    case $stage in
    tests)  # correctness first: the CUDA path of every method against the CPU, and bf16 training
        run_stage tests "$python" -m pytest -q -p no:cacheprovider tests/test_gpu.py \
            --junitxml="$out/gpu-tests.xml" ;;
    perf)  # every method at the smoke, gemma-e32 and gpt2-e32 shapes; LM side on Gemma 3 270M's shape
        run_stage perf "$python" -m bench perf --device cuda --random-lm --no-peers \
            --out "$out/perf-cuda.json" ;;
    cost)  # the MxD paper's four-model sweep in GPU-hours, from rates measured at each run's own shapes
        run_stage cost "$python" -m bench cost sweeps/paper-all.toml --device cuda \
            --out "$out/cost-paper-all-cuda.json" ;;
    compile)  # what --compile buys, on two cells (each compiles once, so this stage is the slowest)
        run_stage compile timeout 240 "$python" -m bench perf --device cuda --compile --no-lm --no-peers \
            --shapes gpt2-e32 --methods tc,mxd --k 32 --out "$out/perf-cuda-compile.json" ;;
    *) echo "unknown stage $stage (choose from: tests perf cost compile)"; exit 2 ;;
    esac
done
note "done, exit $status; files in $out"
exit $status
