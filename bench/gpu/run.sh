#!/usr/bin/env bash
# One short GPU check (about 4 min on an H200): training MFU and sampler tokens/s of a ~0.5B Qwen2 built from a
# config (random init, nothing downloaded). Prints a markdown table with the card, date and torch version,
# and writes it to $OUT/mfu.md when $OUT is set (else runs/gpu/mfu.md).
#   bash bench/gpu/run.sh           on the GPU machine
#   bash bench/gpu/run.sh --tiny    the same code path on the CPU with a tiny config, in seconds
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out="${OUT:-runs/gpu}"
mkdir -p "$out"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/nvidia-smi.csv"
fi
"${PYTHON:-python3}" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'transformers', transformers.__version__)"
timeout 450 "${PYTHON:-python3}" bench/gpu/mfu.py "$@" 2>&1 | tee "$out/mfu.md"
