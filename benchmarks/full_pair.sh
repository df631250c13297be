#!/usr/bin/env bash
# The full-size precision benchmark end to end: two WARSHIP-XZNet β solutions (Mix, seeds 0 and
# 1, steps of 16 patches, bf16; one process per core) trained until each beats bicubic on Set5
# x2, then a 51-point curve and a 21x21 plane through them at ±1% (2σ) over all 9,362 T91 x2
# patches (docs/precision.md).
#
#     bash benchmarks/full_pair.sh [COVARIATES] [OUT]
#
# COVARIATES: sr (lp.data.sr_covariates) or sr-mean (lp.data.sr_covariates_with_mean; the
# default). OUT names the result files (benchmarks/results/OUT*.json; default
# precision_full_pair_21x21_COVARIATES). Each seed trains 500 steps, then 100 more at a time
# (resuming, on the schedule of 8 epochs of 100 steps) until its whole-image Set5 PSNR beats
# bicubic's, at most 800 steps; its checkpoint is then copied to
# results/full_pair/seed*/mix/solution.pt (not in git), and a seed that has one is not trained
# again. results/full_pair/README.md records the runs. Wants bf16 arithmetic or a GPU: on a
# 2-core CPU with AVX512-BF16 each 100 steps take 4-5 minutes (results/full_pair/README.md) and the plane
# over an hour (3,562 s on the Xeon with AMX, benchmarks/results/precision_full_pair_21x21.json).
set -euo pipefail
cd "$(dirname "$0")/.."
covariates="${1:-sr-mean}"
out="${2:-precision_full_pair_21x21_${covariates}}"
case "$covariates" in sr|sr-mean) ;; *) echo "COVARIATES must be sr or sr-mean, not '$covariates'" >&2; exit 2 ;; esac

train() {  # SEED STEPS [--resume]
  local run="results/full_pair/seed$1"
  mkdir -p "$run"
  OMP_NUM_THREADS=1 landprobe reproduce --setting mix --preset paper --amp bf16 --batch-size 16 \
      --patches-per-epoch 1600 --epochs 8 --max-steps "$2" --seed "$1" --threads 1 --out "$run" \
      --no-progress "${@:3}" >> "$run/train.log" 2>&1
}

beats_bicubic() {  # FINAL_JSON: prints steps and PSNR, succeeds when the PSNR beats bicubic's
  python - "$1" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))
print(f"{sys.argv[1]}: {f['steps']} steps, Set5 whole images {f['psnr']:.3f} dB, bicubic {f['bicubic_psnr']:.3f}")
sys.exit(0 if f["psnr"] > f["bicubic_psnr"] else 1)
PY
}

for s in 0 1; do
  run="results/full_pair/seed$s"
  if [ ! -f "$run/mix/solution.pt" ] && [ ! -f "$run/mix/checkpoint.pt" ]; then train "$s" 500 & fi
done
wait
for s in 0 1; do
  run="results/full_pair/seed$s"
  [ -f "$run/mix/solution.pt" ] && continue
  [ -f "$run/mix/final.json" ] || { echo "seed $s left no final.json: see $run/train.log" >&2; exit 1; }
  until beats_bicubic "$run/mix/final.json"; do
    steps=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['steps'])" "$run/mix/final.json")
    [ "$steps" -lt 800 ] || { echo "seed $s has not beaten bicubic in 800 steps" >&2; exit 1; }
    train "$s" $((steps + 100)) --resume
  done
  cp "$run/mix/checkpoint.pt" "$run/mix/solution.pt"
done

python benchmarks/bench_precision.py --a results/full_pair/seed0/mix/solution.pt \
    --b results/full_pair/seed1/mix/solution.pt --control-at --covariates "$covariates" --points 51 \
    --plane-points 21 --batch-size 4 --validate 0.5 --validate-plane=0.5,0.75 --threads 2 --out "$out"
