#!/usr/bin/env bash
# Images/s of SiD and SiD+EL (4 x 4 embedders) at CIFAR-10 shape (EDM's 56 M DDPM++), global batch 256,
# bf16 autocast, on one GPU, after a short warm-up; prints one Markdown table (also EL overhead and peak memory).
#   bash benchmarks/gpu_throughput.sh                 # batch_gpu 64: 4 accumulation rounds
#   BATCH_GPU=256 bash benchmarks/gpu_throughput.sh   # the whole batch at once (needs ~80+ GiB for SiD)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_throughput.sh: no CUDA device')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python benchmarks/distill_speed.py --sizes cifar --distillers "${DISTILLERS:-sid}" \
    --batch 256 --batch-gpu "${BATCH_GPU:-64}" --device cuda --precision bf16 \
    --warmup "${WARMUP:-3}" --iters "${ITERS:-10}" --working-size 32
