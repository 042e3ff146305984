#!/usr/bin/env bash
# The CUDA checks, for a machine with one GPU (CI has none), in one call that stops by a deadline:
#   1. every method and TGL variant trains on the GPU with bf16 autocast, and fp16 with loss scaling
#      (short two-stage runs, four at a time; ~1 min on an H200; RUNS=0 skips them);
#   2. the candidates' paired rounds: benchmarks/migu_sums.py (~80 s on an H100) and
#      benchmarks/ewc_variants.py (paper scale, ~2 min);
#   3. benchmarks/gpu.py, one part at a time in $PARTS' order (on an H100: methods + paper scale
#      ~3 min together, overhead ~5 min), while DEADLINE seconds (default 560) have not passed.
# BENCH=0 stops after 1. Figures land in OUT_DIR as they are made (a killed call keeps them).
#   DEADLINE=560 bash benchmarks/gpu_check.sh [OUT_DIR]
# Where this tree is a copy whose .git may be stale, name the commit: LIFELONG_CODE_VERSION=<hash>.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/gpu_check}
mkdir -p "$out"
start=$SECONDS
left() { echo $(( ${DEADLINE:-560} - (SECONDS - start) )); }
export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
# an image without this project's pure-Python dependencies (hydra-core, omegaconf, antlr4) can
# take them copied from a venv into .devpkgs/ (git-ignored): cp -r .venv/lib/python3*/site-packages/{hydra,omegaconf,antlr4}* .devpkgs/
export PYTHONPATH="$PWD/.devpkgs:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'triton', triton.__version__)"
run() {  # run NAME OVERRIDES...: a short two-stage run on the GPU; its results.json is kept
  local name=$1; shift
  if python3 -m lifelong.train trainer=gpu data.num_stages=2 trainer.steps_per_stage=30 trainer.progress=false \
       "$@" "hydra.run.dir=/tmp/gpu_runs/$name" > "/tmp/gpu_runs_$name.log" 2>&1; then
    cp "/tmp/gpu_runs/$name/results.json" "/tmp/gpu_runs/results_$name.json"
    echo "ok      $name: final new-probe perplexity $(python3 -c "import json; print(round(json.load(open('/tmp/gpu_runs/results_$name.json'))['probe_sets']['new']['final'], 2))")"
  else
    echo "FAILED  $name"; tail -30 "/tmp/gpu_runs_$name.log"; return 1
  fi
}
export -f run
status=0
if [ "${RUNS:-1}" != 0 ]; then
  {
    for method in finetune replay ewc lora migu lora_migu joint; do echo "$method method=$method"; done
    for tgl in freeze adaptive_lr; do echo "migu_$tgl method=migu tgl=$tgl"; done
    echo "fp16 trainer.precision=fp16"
    echo "llama model=tiny_llama method=lora tgl=freeze"
  } | xargs -P 4 -L 1 bash -c 'run "$@"' _ || status=1
  tar -C /tmp/gpu_runs -czf "$out/run_results.tar.gz" $(cd /tmp/gpu_runs && ls results_*.json 2>/dev/null)
fi
quiet() { grep -v -E "it/s|examples/s|^\{'"; }
if [ "${BENCH:-1}" != 0 ]; then
  echo "== migu_sums.py ($(left) s left)"
  timeout "$(left)" python3 benchmarks/migu_sums.py 2>&1 | quiet || status=1
  cp benchmarks/results/migu_sums_cuda.json "$out/" 2>/dev/null
  echo "== ewc_variants.py ($(left) s left)"
  timeout "$(left)" python3 benchmarks/ewc_variants.py 2>&1 | quiet || status=1
  cp benchmarks/results/ewc_variants_cuda.json "$out/" 2>/dev/null
  for part in ${PARTS:-methods methods_paper_scale logging throughput overhead}; do
    [ "$(left)" -gt 30 ] || { echo "== $part: not run, the deadline is near"; status=1; continue; }
    echo "== gpu.py $part ($(left) s left)"
    timeout "$(left)" python3 benchmarks/gpu.py --parts "$part" 2>&1 | quiet || status=1
    cp benchmarks/results/cuda_bf16.json "$out/"
  done
fi
echo "== done ($(left) s left)"
exit $status
