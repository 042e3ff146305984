#!/usr/bin/env bash
# Every benchmark of issue 9, one after another (they must not share the CPU), then RESULTS.md.
#   bash benchmarks/run_all.sh            (~1 hour on 2 cores: overhead.py ~25 min, the paper_main_cpu sweep ~7)
set -euo pipefail
cd "$(dirname "$0")"
export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
python overhead.py
python overhead.py --micro-batch 1 --steps 200 --name overhead_mb1
python methods.py
python methods.py --micro-batch 1 --steps 150 --name methods_mb1
python methods_paired.py
python methods_paired.py --micro-batch 1 --rounds 300 --name methods_paired_mb1
python methods_paired.py --micro-batch 1 --rounds 300 --stage 3 --name methods_paired_mb1_stage3
python migu_sums.py --device cpu --micro-batch 1 --rounds 300
python migu_sums.py --device cpu --model gpt2_100m --micro-batch 1 --rounds 30 --steps 2 \
  --variants finetune,migu,migu_skip_masked_rows --name migu_sums_cpu_100m
python migu_sums.py --device cpu --model gpt2_100m --micro-batch 8 --rounds 10 --steps 1 \
  --variants finetune,migu,migu_skip_masked_rows --name migu_sums_cpu_100m_8x128
python op_counts.py
python tgl.py
python eval_throughput.py
python data_path.py
python corpus.py
python scaling.py
python end_to_end.py
python results_md.py
