#!/usr/bin/env bash
# The full-size precision benchmark end to end: two WARSHIP-XZNet β solutions (Mix, seeds 0 and
# 1, 500 steps of 16 patches, bf16; one process per core), then a 51-point curve and a 21x21
# plane through them at ±1% (2σ) over all 9,362 T91 x2 patches (docs/precision.md).
#
#     bash benchmarks/full_pair.sh [COVARIATES] [OUT]
#
# COVARIATES: sr (lp.data.sr_covariates) or sr-mean (lp.data.sr_covariates_with_mean; the
# default). OUT names the result files (benchmarks/results/OUT*.json; default
# precision_full_pair_21x21_COVARIATES). The checkpoints go to results/full_pair/seed*/mix/
# (not in git); a seed whose step500.pt exists is not trained again. Each solution must beat
# bicubic on Set5 x2 (results/full_pair/README.md records two that do); the script prints
# their final PSNR. Wants bf16 arithmetic or a GPU: on a 2-core CPU with AMX each training
# takes about 35 minutes and the plane about an hour.
set -euo pipefail
cd "$(dirname "$0")/.."
covariates="${1:-sr-mean}"
out="${2:-precision_full_pair_21x21_${covariates}}"
case "$covariates" in sr|sr-mean) ;; *) echo "COVARIATES must be sr or sr-mean, not '$covariates'" >&2; exit 2 ;; esac

for s in 0 1; do
  run="results/full_pair/seed$s"
  if [ ! -f "$run/mix/step500.pt" ]; then
    mkdir -p "$run"
    OMP_NUM_THREADS=1 landprobe reproduce --setting mix --preset paper --amp bf16 --batch-size 16 \
        --patches-per-epoch 1600 --epochs 8 --max-steps 500 --seed "$s" --threads 1 --out "$run" \
        --no-progress > "$run/train.log" 2>&1 &
  fi
done
wait
for s in 0 1; do
  run="results/full_pair/seed$s"
  if [ ! -f "$run/mix/step500.pt" ]; then
    [ -f "$run/mix/checkpoint.pt" ] || { echo "seed $s left no checkpoint: see $run/train.log" >&2; exit 1; }
    cp "$run/mix/checkpoint.pt" "$run/mix/step500.pt"
  fi
  python -c "import json, sys; f = json.load(open(sys.argv[1])); print(sys.argv[1], 'Set5 whole images', \
round(f['psnr_whole_images'], 3), 'dB, bicubic', round(f['bicubic_psnr_whole_images'], 3))" "$run/mix/final.json"
done

python benchmarks/bench_precision.py --a results/full_pair/seed0/mix/step500.pt \
    --b results/full_pair/seed1/mix/step500.pt --control-at --covariates "$covariates" --points 51 \
    --plane-points 21 --batch-size 4 --validate 0.5 --validate-plane=0.5,0.75 --threads 2 --out "$out"
