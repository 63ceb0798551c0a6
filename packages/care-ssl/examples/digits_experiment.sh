#!/usr/bin/env bash
# CARE vs BYOL vs random initialisation on the embedded digits, linear probe and kNN (README "Experiment").
# A few CPU-minutes per run: timm resnet18 at 32 px, 10 epochs of 22 steps (batch 64), one thread each.
set -euo pipefail
OUT=${OUT:-care-digits}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(--model resnet18 --data digits --img-size 32 --epochs 10 --batch-size 64 --lr 0.1 --seed 0 --knn-every 44 --device cpu)
PROBE=(--data digits --img-size 32 --epochs 30 --seed 0)

care-ssl pretrain "${COMMON[@]}" --mode care --out "$OUT/care" &
care-ssl pretrain "${COMMON[@]}" --mode byol --out "$OUT/byol" &
wait
care-ssl probe --weights "$OUT/care/backbone" "${PROBE[@]}" --out "$OUT/care/probe.json"
care-ssl probe --weights "$OUT/byol/backbone" "${PROBE[@]}" --out "$OUT/byol/probe.json"
care-ssl probe --model resnet18 "${PROBE[@]}" --out "$OUT/random-probe.json"
cat "$OUT/care/probe.json" "$OUT/byol/probe.json" "$OUT/random-probe.json"
