#!/usr/bin/env bash
# The CUDA checks, for a machine with one GPU (CI has none), in one call that stops by a deadline:
#   1. every method and TGL variant trains on the GPU with bf16 autocast, and fp16 with loss scaling
#      (short two-stage runs, four at a time, MIGU also with method.skip_masked_rows; ~1 min on an
#      H200; RUNS=0 skips them);
#   2. MIGU's candidates at paper scale in paired rounds: benchmarks/migu_sums.py, gpt2_large 8x512,
#      $MIGU_VARIANTS (default finetune, migu, migu_masks, migu_hook_masks and migu_skip_masked_rows; ~2 min;
#      five gpt2_large (710M params) with their AdamW state, 43 GB, plus one step's gradients and
#      activations: it fits an H100 too; a sixth, migu_hook_sums say, adds 8.5 GB); with
#      EWC_VARIANTS=1 also
#      benchmarks/ewc_variants.py (EWC met its target at 6e08f6d, so it is left out by default);
#   3. torch.profiler over MIGU's step at paper scale (benchmarks/profile_step.py: how busy the GPU
#      is, which kernels take its time; ~40 s; PROFILE_METHODS="migu finetune" adds finetune's for
#      comparison, PROFILE_METHODS= skips it);
#   4. benchmarks/gpu.py, one part at a time in $PARTS' order, while DEADLINE seconds (default 560)
#      have not passed. On an H200 at 6e08f6d: methods_paper_scale 2 min, methods 45 s, a pair of
#      logging runs 35 s, throughput 35 s, one repetition of overhead ~70 s (OVERHEAD_REPEATS, 3).
#      The default order puts first what was missed or stale there; a part cut off saves nothing.
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
    echo "migu_skip method=migu method.skip_masked_rows=true trainer.grad_accum=2"
    echo "fp16 trainer.precision=fp16"
    echo "llama model=tiny_llama method=lora tgl=freeze"
  } | xargs -P 4 -L 1 bash -c 'run "$@"' _ || status=1
  tar -C /tmp/gpu_runs -czf "$out/run_results.tar.gz" $(cd /tmp/gpu_runs && ls results_*.json 2>/dev/null)
fi
quiet() { grep -v -E "it/s|examples/s|^\{'"; }
if [ "${BENCH:-1}" != 0 ]; then
  echo "== migu_sums.py at paper scale ($(left) s left)"
  timeout "$(left)" python3 benchmarks/migu_sums.py --model gpt2_large --micro-batch 8 --name migu_sums_cuda_paper \
    --variants "${MIGU_VARIANTS:-finetune,migu,migu_masks,migu_hook_masks,migu_skip_masked_rows}" 2>&1 | quiet || status=1
  cp benchmarks/results/migu_sums_cuda_paper.json "$out/" 2>/dev/null
  for method in ${PROFILE_METHODS-migu}; do
    echo "== profile_step.py, $method at paper scale ($(left) s left)"
    timeout "$(left)" python3 benchmarks/profile_step.py --micro-batch 8 --steps 5 --top 20 method="$method" \
      trainer=gpu trainer.device=cuda model=gpt2_large data.seq_len=512 model.max_seq_len=512 2>&1 \
      | tee "$out/profile_${method}_paper.txt" || status=1
  done
  if [ "${EWC_VARIANTS:-0}" = 1 ]; then
    echo "== ewc_variants.py ($(left) s left)"
    timeout "$(left)" python3 benchmarks/ewc_variants.py 2>&1 | quiet || status=1
    cp benchmarks/results/ewc_variants_cuda.json "$out/" 2>/dev/null
  fi
  for part in ${PARTS:-methods_paper_scale overhead methods logging throughput}; do
    [ "$(left)" -gt 30 ] || { echo "== $part: not run, the deadline is near"; status=1; continue; }
    echo "== gpu.py $part ($(left) s left)"
    timeout "$(left)" python3 benchmarks/gpu.py --parts "$part" --overhead-repeats "${OVERHEAD_REPEATS:-3}" 2>&1 \
      | quiet || status=1
    cp benchmarks/results/cuda_bf16.json "$out/"
  done
fi
echo "== done ($(left) s left)"
exit $status
