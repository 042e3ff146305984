#!/usr/bin/env bash
# The CUDA checks, for a machine with one GPU (CI has none): every method and TGL variant
# trains on the GPU with bf16 autocast, fp16 with loss scaling trains (four runs at a time), then
# benchmarks/gpu.py unless BENCH=0.
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (~10 min on an H200; the runs alone ~2 min)
# Where this tree is a copy whose .git may be stale, name the commit: LIFELONG_CODE_VERSION=<hash>.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/gpu_check}
mkdir -p "$out"
export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
# an image without this project's pure-Python dependencies (hydra-core, omegaconf, antlr4) can
# take them copied from a venv into .devpkgs/ (git-ignored): cp -r .venv/lib/python3*/site-packages/{hydra,omegaconf,antlr4}* .devpkgs/
export PYTHONPATH="$PWD/.devpkgs:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
run() {  # run NAME OVERRIDES...: a short two-stage run on the GPU; its results.json is kept
  local name=$1; shift
  if python3 -m lifelong.train trainer=gpu data.num_stages=2 trainer.steps_per_stage=30 trainer.progress=false \
       "$@" "hydra.run.dir=/tmp/gpu_runs/$name" > "/tmp/gpu_runs_$name.log" 2>&1; then
    cp "/tmp/gpu_runs/$name/results.json" "$out/results_$name.json"
    echo "ok      $name: final new-probe perplexity $(python3 -c "import json; print(round(json.load(open('$out/results_$name.json'))['probe_sets']['new']['final'], 2))")"
  else
    echo "FAILED  $name"; tail -30 "/tmp/gpu_runs_$name.log"; return 1
  fi
}
export -f run
export out
status=0
{
  for method in finetune replay ewc lora migu lora_migu joint; do echo "$method method=$method"; done
  for tgl in freeze adaptive_lr; do echo "migu_$tgl method=migu tgl=$tgl"; done
  echo "fp16 trainer.precision=fp16"
  echo "llama model=tiny_llama method=lora tgl=freeze"
} | xargs -P 4 -L 1 bash -c 'run "$@"' _ || status=1
if [ "${BENCH:-1}" != 0 ]; then
  python3 benchmarks/gpu.py --steps 100 --repeats 3 2>&1 | grep -v -E "it/s|examples/s|^\{'" || status=1
fi
cp benchmarks/results/cuda_bf16.json "$out/" 2>/dev/null
exit $status
