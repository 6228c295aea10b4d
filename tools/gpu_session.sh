#!/usr/bin/env bash
# One prepared GPU run for a session that is lent a device (issue 13): measures RIM throughput on the
# GPU, then trains the seed-size RIM (T = 10, 32/128/32, bf16 autocast) on the galaxies preset (real
# training galaxies of ../shared/data mixed with procedural sources) for a fixed wall time, and leaves
# under $OUT small files only (the device returns at most 8 files of 16 MiB):
#   weights.pt, optimizer.pt   the checkpoint split in two (rim.train.split_checkpoint)
#   env.txt gpu.txt throughput.txt train.txt log.csv
# A second call resumes: copy the returned weights.pt and optimizer.pt into gpu_resume/ of the working
# tree (untracked files travel to the device) and run this again; they are joined into a checkpoint
# (rim.train.join_checkpoint) and training goes on with --resume. The device image has torch, numba,
# scipy, h5py and matplotlib (no astropy, tqdm, scikit-sparse): lensinv and rim import those lazily,
# so the repository runs from PYTHONPATH.
#
#   bash tools/gpu_session.sh [TRAIN_SECONDS] [BATCH] [WORKERS]      # defaults 420 64 14
#
# DEVICE (default cuda), CHECKPOINT_EVERY (100) and VAL_LENSES (64) may be set in the environment, e.g.
# a smoke run of the whole path on a CPU (two calls, the second resuming the first's parts):
#   DEVICE=cpu CHECKPOINT_EVERY=1 VAL_LENSES=2 OUT=/tmp/g1 bash tools/gpu_session.sh 90 2 0
#   DEVICE=cpu CHECKPOINT_EVERY=1 VAL_LENSES=2 OUT=/tmp/g2 RESUME_FROM=/tmp/g1 bash tools/gpu_session.sh 90 2 0
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-$PWD/gpu_out}
SECONDS_TRAIN=${1:-420}
BATCH=${2:-64}
WORKERS=${3:-14}
RESUME_FROM=${RESUME_FROM:-gpu_resume}
DEVICE=${DEVICE:-cuda}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-100}
VAL_LENSES=${VAL_LENSES:-64}
mkdir -p "$OUT" "$OUT/run"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import torch, numba; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numba', numba.__version__)" \
    | tee "$OUT/env.txt"
timeout 120 python benchmarks/rim_throughput.py --device "$DEVICE" --batch "$BATCH" --repeats 5 --amp 2>&1 | tee "$OUT/throughput.txt"
RESUME=""
if [ -f "$RESUME_FROM/weights.pt" ] && [ -f "$RESUME_FROM/optimizer.pt" ]; then
    python -c "from rim.train import join_checkpoint; join_checkpoint('$RESUME_FROM', '$OUT/run/checkpoint.pt')" \
        && RESUME="--resume"
fi
timeout "$SECONDS_TRAIN" python scripts/train_rim.py --device "$DEVICE" --out "$OUT/run" $RESUME --preset galaxies \
    --batch "$BATCH" --workers "$WORKERS" --lr 3e-4 --checkpoint-every "$CHECKPOINT_EVERY" --val-every 200 \
    --val-lenses "$VAL_LENSES" \
    --log-every 20 2>&1 | tail -n 50 > "$OUT/train.txt"
ls -la "$OUT/run" >> "$OUT/train.txt" 2>&1
if [ -f "$OUT/run/checkpoint.pt" ]; then
    python -c "from rim.train import split_checkpoint; split_checkpoint('$OUT/run/checkpoint.pt', '$OUT')" \
        >> "$OUT/train.txt" 2>&1
fi
cp "$OUT/run/log.csv" "$OUT/log.csv" 2>/dev/null
rm -rf "$OUT/run"  # the joined checkpoint (~21 MB) would not come back; its parts do
ls -la "$OUT" >> "$OUT/train.txt" 2>&1
exit 0
