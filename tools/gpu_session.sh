#!/usr/bin/env bash
# One prepared GPU run for a session that is lent a device (see the RIM issue): measures RIM throughput
# on the GPU and trains from scratch (or resumes) for a fixed wall time, leaving the checkpoint and
# logs under $OUT. The device image has torch, numba, scipy, h5py and matplotlib (no astropy, tqdm,
# scikit-sparse): lensinv and rim import those lazily, so the repository runs from PYTHONPATH.
#
#   bash tools/gpu_session.sh [TRAIN_SECONDS] [BATCH] [WORKERS]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-$PWD/gpu_out}
SECONDS_TRAIN=${1:-420}
BATCH=${2:-32}
WORKERS=${3:-14}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import torch, numba; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numba', numba.__version__)" \
    | tee "$OUT/env.txt"
timeout 120 python benchmarks/rim_throughput.py --device cuda --batch 64 --repeats 5 --amp 2>&1 | tee "$OUT/throughput.txt"
RESUME=""
[ -f "$OUT/run/checkpoint.pt" ] && RESUME="--resume"
timeout "$SECONDS_TRAIN" python scripts/train_rim.py --device cuda --out "$OUT/run" $RESUME --batch "$BATCH" \
    --workers "$WORKERS" --lr 3e-4 --checkpoint-every 100 --val-every 200 --val-lenses 64 --log-every 20 \
    2>&1 | tail -n 50 > "$OUT/train.txt"
ls -la "$OUT/run" >> "$OUT/train.txt" 2>&1
exit 0
