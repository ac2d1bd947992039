#!/usr/bin/env bash
# The GPU measurements of benchmarks/README.md in one go, on a machine with one CUDA GPU.
#   bash benchmarks/gpu_suite.sh OUTDIR [PART ...]      PART: nets clip vdvae vd ridge (default: all)
# Each part appends JSON lines to OUTDIR/PART.log; nothing is downloaded (random weights).
set -u
out=${1:?usage: gpu_suite.sh OUTDIR [PART ...]}; shift
parts=${*:-nets clip vdvae vd ridge}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
threads=$(nproc)
for part in $parts; do
  echo "== $part $(date -u +%H:%M:%S)"
  case $part in
    nets)  python3 -m pytest -q -p no:cacheprovider tests/test_eval_nets.py -k torchvision -rA ;;
    clip)  for b in 64 256; do
             python3 benchmarks/bench_clip.py --sizes full --device cuda --dtype float16 --images 1024 \
               --batch-size $b --workers "$threads" --threads "$threads" --repeats 2
           done
           python3 benchmarks/bench_clip.py --sizes full --device cuda --dtype bfloat16 --images 1024 \
             --batch-size 256 --workers "$threads" --threads "$threads" --repeats 2 ;;
    vdvae) for d in float32 bfloat16; do
             python3 benchmarks/bench_vdvae.py --sizes full --device cuda --dtype $d --images 256 --batch-size 64 \
               --threads "$threads" --repeats 2
           done ;;
    vd)    python3 benchmarks/bench_versatile.py --sizes full --device cuda --dtype float16 --steps 50 \
             --strength 0.75 --images 1 8 16 32 --threads "$threads" ;;
    ridge) python3 -m pytest -q -p no:cacheprovider tests/test_ridge_torch.py
           python3 benchmarks/bench_ridge.py full --device cuda ;;
  esac 2>&1 | tee -a "$out/$part.log"
done
