#!/usr/bin/env bash
# `vlm compare` on the GPU machine: first the three families' tiny fixtures in f32 (the
# NVML memory path, the CUDA context reported apart, a missing model, a broken photo),
# then random real-size Qwen2.5-VL-3B and BLIP-2 OPT-2.7B checkpoints in bf16 on eight
# 1024×768 photos and a trip of three, with a price and a cascade. Reports go to
# $OUT/tiny and $OUT/real (report.md, report.html, results.json), the log to $OUT/log.txt.
#
# Needs, carried in .devbin/: vlm.xz (`cargo build --release --features cuda -p vlm-examples`,
# see ../shared/gpu/README.md), assets.tar.xz and device-env.sh (build.sh writes both).
#   bash benches/gpu/compare.sh
set -o pipefail
OUT=${OUT:-/tmp/compare-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
t0=$SECONDS
xz -dc .devbin/vlm.xz > /tmp/vlm && chmod +x /tmp/vlm
[ -f .devbin/device-env.sh ] && . .devbin/device-env.sh /tmp/vlm | tail -1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
# The card the reports name (the lent machine may be an H100 or an H200).
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | sed 's/^NVIDIA //; s/ .*//')
A=.devbin/assets
mkdir -p $A && tar -xJf .devbin/assets.tar.xz -C $A
[ -d $A/Qwen2.5-VL-3B-Instruct ] || { cp -r $A/Qwen2.5-VL-7B-Instruct $A/Qwen2.5-VL-3B-Instruct &&
  cp $A/configs/Qwen2.5-VL-3B-Instruct.json $A/Qwen2.5-VL-3B-Instruct/config.json; }

T=/tmp/compare-tiny
rm -rf $T && mkdir -p $T/photos $T/trips/trip1
python3 benches/gpu/make_photos.py $T/photos 3 96 64 | tail -1
cp $T/photos/IMG_00000.jpg $T/photos/IMG_00001.jpg $T/trips/trip1/
echo "not a photo" > $T/photos/broken.jpg
printf '%s\n' '{"photo": "IMG_00000.jpg", "caption": "一家人围着一桌菜吃饭", "language": "zh"}' \
  '{"photo": "IMG_00001.jpg", "question": "照片中主菜是什么?", "answer": "红烧肉"}' \
  '{"photo": "nope.jpg", "caption": "not there"}' > $T/refs.jsonl
F=vlm-models/tests/fixtures
echo "== tiny fixtures, cuda f32 ($((SECONDS - t0)) s)"
/tmp/vlm compare --model $F/qwen/qwen2_vl/model --model $F/blip2/opt/model \
  --model $F/minigpt4/vicuna0/model --model /nonexistent \
  --photos $T/photos --trips $T/trips --references $T/refs.jsonl --price-per-hour 5.8 --card "${card:-GPU}" \
  --cascade opt/model:qwen2_vl/model --threshold -0.5 --device cuda --dtype f32 \
  --max-new-tokens 6 --batch-size 2 --report "$OUT/tiny"

echo "== random real-size checkpoints ($((SECONDS - t0)) s)"
for m in Qwen2.5-VL-3B-Instruct blip2-opt-2.7b; do
  [ -d /tmp/m/$m ] || python3 benches/gpu/make_random_model.py $A/$m /tmp/m/$m 2>&1 | tail -1
done
R=/tmp/compare-real
rm -rf $R && mkdir -p $R/photos $R/trips/trip1
python3 benches/gpu/make_photos.py $R/photos 8 1024 768 | tail -1
cp $R/photos/IMG_0000[135].jpg $R/trips/trip1/
echo "== real-size compare, cuda bf16 ($((SECONDS - t0)) s)"
/tmp/vlm compare --model /tmp/m/Qwen2.5-VL-3B-Instruct --model /tmp/m/blip2-opt-2.7b \
  --photos $R/photos --trips $R/trips --price-per-hour 5.8 --card "${card:-GPU}" \
  --cascade blip2-opt-2.7b:Qwen2.5-VL-3B-Instruct --threshold -1.5 \
  --device cuda --dtype bf16 --max-new-tokens 32 --batch-size 4 --max-pixels 1003520 \
  --report "$OUT/real"
echo "== done ($((SECONDS - t0)) s)"
