#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, after build.sh filled .devbin/:
#   1. the GPU check: every family's parity tests on CUDA in f32 (CPU tolerances), bf16
#      and f16;
#   2. a random real-size checkpoint (make_random_model.py) written to local disk once;
#   3. vlm-bench on it, then the HF transformers baseline on the same files and photo,
#      each with nvidia-smi sampling the GPU memory in use;
#   4. with PROFILE=1, Nsight Compute's kernel times over one describe call.
# Results (logs, JSON) go to $OUT (or ./bench-out), packed into results.tar.gz at the end
# (a lent machine sends back at most 8 files).
#   MODEL=Qwen2.5-VL-7B-Instruct TOKENS=64 BATCHES=8 CHECK=1 BENCH=1 benches/gpu/run.sh
# OLD_NEW=1 adds the previous build's vlm-bench (.devbin/vlm-bench-old.xz) alternated with this one.
set -uo pipefail
OUT=${OUT:-$PWD/bench-out}; mkdir -p "$OUT"
pack() { (cd "$OUT" && tar -czf results.tar.gz --exclude results.tar.gz -- * 2>/dev/null); }
trap pack EXIT
MODEL=${MODEL:-Qwen2.5-VL-7B-Instruct}
TOKENS=${TOKENS:-64}; BATCHES=${BATCHES:-8}; RUNS=${RUNS:-3}
CHECK=${CHECK:-1}; BENCH=${BENCH:-1}; BASELINE=${BASELINE:-1}
status=0

CHECKS=${CHECKS:-gpu_check}
QUANT=${QUANT:-0}
# Batches of the QUANT=1 runs (QUANT_BATCHES=1: the peak memory of batch 1 alone).
QUANT_BATCHES=${QUANT_BATCHES:-$BATCHES}
# model:quantizations to benchmark with QUANT=1 (random real-size weights; "none" = bf16;
# "int4/int4" = language model / vision tower)
QUANT_MODELS=${QUANT_MODELS:-"Qwen2.5-VL-7B-Instruct:int8,int4 Qwen2.5-VL-3B-Instruct:none,int4 blip2-opt-2.7b:none,int4"}
for b in vlm-bench vlm-bench-old album $CHECKS; do
  if [ -f ".devbin/$b.xz" ]; then
    python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      ".devbin/$b.xz" "/tmp/$b" && chmod +x "/tmp/$b"
  elif [ -f ".devbin/$b.gz" ]; then
    gunzip -c ".devbin/$b.gz" > "/tmp/$b" && chmod +x "/tmp/$b"
  fi
done
if [ -f .devbin/assets.tar.xz ] && [ ! -d .devbin/assets ]; then
  mkdir -p .devbin/assets && tar -xJf .devbin/assets.tar.xz -C .devbin/assets
fi
# shellcheck disable=SC1091
[ -f .devbin/device-env.sh ] && . .devbin/device-env.sh /tmp/vlm-bench > "$OUT/device-env.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# Peak "memory.used" of the card while a command runs (includes the CUDA context).
peak_mem() {
  local log=$1; shift
  ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.05; done ) > "$log.mem" &
  local sampler=$!
  timeout -k 5 "${STEP_TIMEOUT:-300}" "$@"; local rc=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  echo "peak GPU memory used: $(sort -n "$log.mem" | tail -1) MiB" | tee -a "$log"
  rm -f "$log.mem"  # only 8 files come back from the device
  return $rc
}

# A kernel fault can leave a test binary hung after its panic (run 19 lost a whole call so):
# every pass has a time limit. CHECK_THREADS=4: the tests on four threads at once, models
# loaded and run side by side as in a server (run 36's 7.5 build crashed so).
CHECK_TIMEOUT=${CHECK_TIMEOUT:-180}
check_pass() {  # dtype log [VAR=value]
  local dt=$1 log=$2; shift 2
  for t in $CHECKS; do
    echo "== GPU check, $t, cuda $dt $*" | tee -a "$log"
    ( [ $# -gt 0 ] && export "$@"; VLM_TEST_DEVICE=cuda VLM_TEST_DTYPE=$dt VLM_FIXTURES=$PWD/vlm-models/tests/fixtures \
      timeout -k 5 "$CHECK_TIMEOUT" "/tmp/$t" --test-threads "${CHECK_THREADS:-1}" ) >> "$log" 2>&1 || { status=1; echo "FAILED or timed out ($t, $dt $*)" | tee -a "$log"; }
  done
  grep -E "== GPU|test result|mismatch|rel err|panicked|FAILED" "$log" | head -40
}
if [ "$CHECK" = 1 ]; then
  # CHECK_DTYPES="f32 f16" for a check built for pre-Ampere cards (build.sh OLD_CARDS=1).
  for dt in ${CHECK_DTYPES:-f32 bf16 f16}; do
    : > "$OUT/check-$dt.log"  # one log per dtype: only 8 files come back from the device
    check_pass "$dt" "$OUT/check-$dt.log"
  done
fi
# PRODUCTS=1: the decode-shape products timed against cuBLAS (gemv, mma_gemv, cuBLAS; µs
# and TB/s per call at 1 to 32 rows; the test asserts they agree), printed.
if [ "${PRODUCTS:-0}" = 1 ]; then
  VLM_TEST_DEVICE=cuda timeout -k 5 "$CHECK_TIMEOUT" /tmp/gpu_check few_row_products --nocapture \
    --test-threads 1 > "$OUT/products.log" 2>&1 || status=1
  grep -E " m=|test result|panicked" "$OUT/products.log"
fi
# CHECK_VARIANTS="VLM_CUDA_GRAPH=0": the f32 check again under each switch (its log joins
# check-f32.log: only 8 files come back).
for v in ${CHECK_VARIANTS:-}; do
  check_pass f32 "$OUT/check-f32.log" "$v"
done

# Models that share their family's tokenizer and processor files: the 2B configs written
# from the published values (benches/gpu/configs) and Qwen2.5-VL-3B's real config.
config_only_assets() {
  for cfg in benches/gpu/configs/*.json .devbin/assets/configs/*.json; do
    [ -f "$cfg" ] || continue
    name=$(basename "$cfg" .json)
    case $name in Qwen3-VL-*) family=Qwen3-VL-8B-Instruct ;; *) family=Qwen2.5-VL-7B-Instruct ;; esac
    if [ ! -d ".devbin/assets/$name" ] && [ -d ".devbin/assets/$family" ]; then
      cp -r ".devbin/assets/$family" ".devbin/assets/$name" && cp "$cfg" ".devbin/assets/$name/config.json"
    fi
  done
}

if [ "$BENCH" = 1 ]; then
  echo "== random $MODEL"
  python3 benches/gpu/make_random_model.py ".devbin/assets/$MODEL" /tmp/bench-model 2>&1 | tail -2
  # The same binary with environment switches, one run each (e.g. VARIANTS="VLM_FUSED_KERNELS=0
  # VLM_GEMV=1"): what each kernel brings, measured on one card in one call.
  for v in ${VARIANTS:-}; do
    echo "== vlm-bench, $v" | tee -a "$OUT/vlm-bench-variants.log"
    ( export "${v?}"; peak_mem "$OUT/vlm-bench-variants.log" /tmp/vlm-bench --model /tmp/bench-model \
      --tokens "$TOKENS" --batches "$BATCHES" --runs "$RUNS" 2>&1 | tee -a "$OUT/vlm-bench-variants.log" ) || status=1
  done
  echo "== vlm-bench"
  peak_mem "$OUT/vlm-bench.log" /tmp/vlm-bench --model /tmp/bench-model --tokens "$TOKENS" --batches "$BATCHES" \
    --runs "$RUNS" --save-photo /tmp/photo.png --json "$OUT/vlm-bench.json" 2>&1 | tee -a "$OUT/vlm-bench.log" || status=1
  # OLD_NEW=1: the previous build (.devbin/vlm-bench-old.xz) and this one, alternated
  # OLD_NEW_ROUNDS times on the same checkpoint, photo and card: a refactor's "within noise".
  if [ "${OLD_NEW:-0}" = 1 ] && [ -x /tmp/vlm-bench-old ]; then
    : > "$OUT/old-new.log"
    for r in $(seq "${OLD_NEW_ROUNDS:-2}"); do
      for b in vlm-bench-old vlm-bench; do
        echo "== round $r: $b" | tee -a "$OUT/old-new.log"
        peak_mem "$OUT/old-new.log" "/tmp/$b" --model /tmp/bench-model --tokens "$TOKENS" --batches "$BATCHES" \
          --runs "$RUNS" 2>&1 | grep -v "^|---" | tee -a "$OUT/old-new.log" || status=1
      done
    done
  fi
  if [ "$BASELINE" = 1 ]; then
    echo "== HF transformers baseline"
    PYTHONUNBUFFERED=1 peak_mem "$OUT/hf.log" python3 benches/gpu/hf_baseline.py /tmp/bench-model /tmp/photo.png \
      --tokens "$TOKENS" --batches "$BATCHES" --runs "$RUNS" --json "$OUT/hf.json" 2>&1 | grep -v Warning | tee -a "$OUT/hf.log" || status=1
  fi
fi
if [ "${PROFILE:-0}" = 1 ]; then
  config_only_assets
  [ -d /tmp/bench-model ] || python3 benches/gpu/make_random_model.py ".devbin/assets/$MODEL" /tmp/bench-model 2>&1 | tail -2
  # GPU time per kernel over one describe call of PROFILE_TOKENS tokens (vlm-bench starts
  # the CUDA profiler around it); its wall-clock split without ncu is vlm-bench's table.
  ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)
  # PROFILE_ARGS: more vlm-bench arguments (a phone photo: "--width 4032 --height 3024").
  # shellcheck disable=SC2206
  prof=(--profile --profile-tokens "${PROFILE_TOKENS:-2}" --profile-batch "${PROFILE_BATCH:-1}" ${PROFILE_ARGS:-})
  echo "== ncu ($ncu_bin), one describe call of ${PROFILE_BATCH:-1} photo(s), ${PROFILE_TOKENS:-2} tokens" | tee "$OUT/profile.log"
  /tmp/vlm-bench --model /tmp/bench-model "${prof[@]}" 2>&1 | tee -a "$OUT/profile.log"
  if [ -n "$ncu_bin" ]; then
    timeout "${PROFILE_TIMEOUT:-240}" "$ncu_bin" --clock-control none --profile-from-start off \
      --metrics gpu__time_duration.sum --csv --page raw \
      /tmp/vlm-bench --model /tmp/bench-model "${prof[@]}" > "$OUT/ncu.csv" 2>> "$OUT/profile.log"
    python3 benches/gpu/ncu_summary.py "$OUT/ncu.csv" --top 30 | tee -a "$OUT/profile.log"
  fi
fi

if [ "${MINIGPT4:-0}" = 1 ]; then
  # MiniGPT-4 from random release-layout files (no HF baseline exists: transformers does
  # not run MiniGPT-4). The .pth files are read as released (fp16 ViT, unpickled).
  echo "== random MiniGPT-4 7B" | tee "$OUT/minigpt4.log"
  python3 benches/gpu/make_random_minigpt4.py .devbin/assets/llama-tokenizer/tokenizer.model /tmp/minigpt4 2>&1 \
    | tail -1 | tee -a "$OUT/minigpt4.log"
  peak_mem "$OUT/minigpt4.log" /tmp/vlm-bench --model /tmp/minigpt4 --tokens "$TOKENS" --batches "$BATCHES" \
    --runs 2 2>&1 | grep -v "^|---" | tee -a "$OUT/minigpt4.log" || status=1
  # MINIGPT4_QUANT="int4 int8": the same files quantized into a folder (timed), loaded, run.
  for q in ${MINIGPT4_QUANT:-}; do
    echo "== vlm-bench MiniGPT-4 quant=$q" | tee -a "$OUT/minigpt4.log"
    peak_mem "$OUT/minigpt4.log" /tmp/vlm-bench --model /tmp/minigpt4 --quant "$q" --save-quantized "/tmp/q-minigpt4-$q" \
      --tokens "$TOKENS" --batches "$BATCHES" --runs 2 2>&1 | grep -v "^|---" | tee -a "$OUT/minigpt4.log" || status=1
    rm -rf "/tmp/q-minigpt4-$q"
  done
fi

if [ "${PHONE:-0}" = 1 ]; then
  # 12 MP phone photos (4032x3024): each model at the checkpoint's default pixel budget and
  # at the album budget docs/models.md recommends ("name:quant:max_pixels"; quant as in
  # QUANT_MODELS). PHONE_BASELINE=1 adds HF transformers at both budgets (bf16 specs only).
  config_only_assets
  : > "$OUT/phone.log"
  # With OLD_NEW=1 the previous build runs each row first.
  bins=(vlm-bench); [ "${OLD_NEW:-0}" = 1 ] && [ -x /tmp/vlm-bench-old ] && bins=(vlm-bench-old vlm-bench)
  for spec in ${PHONE_MODELS:-"Qwen2.5-VL-7B-Instruct:none:1003520 Qwen3-VL-2B-Instruct:int4/int4:1310720"}; do
    name=${spec%%:*}; rest=${spec#*:}; q=${rest%%:*}; budget=${rest#*:}
    vision=(); case $q in */*) vision=(--vision-quant "${q#*/}"); q=${q%%/*} ;; esac
    src=/tmp/rand-$name
    if [ "$name" = "$MODEL" ] && [ -d /tmp/bench-model ]; then src=/tmp/bench-model; fi
    [ -d "$src" ] || python3 benches/gpu/make_random_model.py ".devbin/assets/$name" "$src" 2>&1 | tail -1 | tee -a "$OUT/phone.log"
    # PHONE_BUDGETS=default: the checkpoint's own budget alone.
    for b in ${PHONE_BUDGETS:-default "$budget"}; do
      px=(); [ "$b" != default ] && px=(--max-pixels "$b")
      for bin in "${bins[@]}"; do
        echo "== $bin $name quant=$q ${vision[*]} 4032x3024 max_pixels=$b" | tee -a "$OUT/phone.log"
        peak_mem "$OUT/phone.log" "/tmp/$bin" --model "$src" --quant "$q" "${vision[@]}" --width 4032 --height 3024 \
          "${px[@]}" --save-photo /tmp/phone.png --tokens "$TOKENS" --batches "${PHONE_BATCHES:-1}" --runs 2 2>&1 \
          | grep -v "^|---" | tee -a "$OUT/phone.log" || status=1
      done
      if [ "${PHONE_BASELINE:-0}" = 1 ] && [ "$q" = none ]; then
        echo "== HF transformers $name 4032x3024 max_pixels=$b" | tee -a "$OUT/phone.log"
        PYTHONUNBUFFERED=1 peak_mem "$OUT/phone.log" python3 benches/gpu/hf_baseline.py "$src" /tmp/phone.png \
          "${px[@]}" --tokens "$TOKENS" --batches 1 --runs 2 2>&1 | grep -v Warning | tee -a "$OUT/phone.log" || status=1
      fi
    done
    [ "$src" = /tmp/bench-model ] || rm -rf "$src"
  done
fi

if [ "${ALBUM:-0}" = 1 ]; then
  # The album example over ALBUM_PHOTOS generated phone photos (4032x3024 JPEGs) with a
  # random real-size Qwen2.5-VL-7B at int4 (quantized at load, timed inside the first run),
  # the recommended pixel budget, then the same command again: every photo cached.
  n=${ALBUM_PHOTOS:-500}
  echo "== album: $n photos" | tee "$OUT/album.log"
  python3 benches/gpu/make_photos.py /tmp/album-photos "$n" 2>&1 | tail -1 | tee -a "$OUT/album.log"
  [ -d /tmp/bench-model ] || python3 benches/gpu/make_random_model.py ".devbin/assets/$MODEL" /tmp/bench-model 2>&1 | tail -2
  args=(index /tmp/album-photos --db /tmp/album.db --model /tmp/bench-model --quant "${ALBUM_QUANT:-int4}"
        --language "${ALBUM_LANGUAGE:-en}" --max-pixels "${ALBUM_MAX_PIXELS:-1003520}"
        --batch-size "${ALBUM_BATCH:-8}" --max-new-tokens "${ALBUM_TOKENS:-32}" --json)
  for pass in first again; do
    echo "== album index, $pass run" | tee -a "$OUT/album.log"
    start=$(date +%s%N)
    STEP_TIMEOUT=${ALBUM_TIMEOUT:-420} peak_mem "$OUT/album.log" /tmp/album "${args[@]}" 2>&1 | tail -3 | tee -a "$OUT/album.log" || status=1
    echo "wall: $(( ($(date +%s%N) - start) / 1000000 )) ms (load and quantization included)" | tee -a "$OUT/album.log"
  done
  python3 - <<'PY' 2>&1 | tee -a "$OUT/album.log"
import json, sqlite3
db = sqlite3.connect("/tmp/album.db")
print("photos:", db.execute("SELECT COUNT(*) FROM photos").fetchone()[0],
      "results:", db.execute("SELECT COUNT(*) FROM results").fetchone()[0],
      "errors:", db.execute("SELECT COUNT(*) FROM errors").fetchone()[0])
row = db.execute("SELECT timings FROM results LIMIT 1").fetchone()
print("one photo's timings:", row[0] if row else None)
PY
fi

if [ "$QUANT" = 1 ]; then
  # Quantize each random checkpoint into a folder (timed), then load that folder and
  # benchmark it; the peak is the card's memory counter (CUDA context included).
  config_only_assets
  : > "$OUT/quant.log"
  for spec in $QUANT_MODELS; do
    name=${spec%%:*}; quants=${spec#*:}
    echo "== random $name" | tee -a "$OUT/quant.log"
    src=/tmp/rand-$name
    if [ "$name" = "$MODEL" ] && [ -d /tmp/bench-model ]; then
      src=/tmp/bench-model  # BENCH=1 wrote this model's checkpoint already (~40 s saved)
    else
      python3 benches/gpu/make_random_model.py ".devbin/assets/$name" "$src" 2>&1 | tail -1 | tee -a "$OUT/quant.log"
    fi
    for q in ${quants//,/ }; do
      # "int4/int4": the language model's quantization / the vision tower's.
      vision=(); case $q in */*) vision=(--vision-quant "${q#*/}"); q=${q%%/*} ;; esac
      save=(); [ "$q" != none ] && save=(--save-quantized "/tmp/q-$name-$q")
      echo "== vlm-bench $name quant=$q ${vision[*]}" | tee -a "$OUT/quant.log"
      peak_mem "$OUT/quant.log" /tmp/vlm-bench --model "$src" --quant "$q" "${vision[@]}" "${save[@]}" \
        --tokens "$TOKENS" --batches "$QUANT_BATCHES" --runs 2 2>&1 | grep -v "^|---" | tee -a "$OUT/quant.log" || status=1
      # QUANT_VARIANTS="VLM_CUDA_GRAPH=0": the saved folder again with each switch (one call,
      # one card, the same quantized weights).
      for v in ${QUANT_VARIANTS:-}; do
        [ "$q" != none ] || continue
        echo "== vlm-bench $name quant=$q ${vision[*]}, $v" | tee -a "$OUT/quant.log"
        ( export "${v?}"; peak_mem "$OUT/quant.log" /tmp/vlm-bench --model "/tmp/q-$name-$q" \
          --tokens "$TOKENS" --batches "$QUANT_BATCHES" --runs 2 2>&1 | grep -v "^|---" | tee -a "$OUT/quant.log" ) || status=1
      done
      # OLD_NEW=1: the previous build (.devbin/vlm-bench-old.xz) and this one alternated on the
      # saved folder, OLD_NEW_ROUNDS times: a change to a quantized path against the build before.
      if [ "${OLD_NEW:-0}" = 1 ] && [ -x /tmp/vlm-bench-old ] && [ "$q" != none ]; then
        for r in $(seq "${OLD_NEW_ROUNDS:-2}"); do
          for b in vlm-bench-old vlm-bench; do
            echo "== round $r: $b $name quant=$q ${vision[*]}" | tee -a "$OUT/quant.log"
            peak_mem "$OUT/quant.log" "/tmp/$b" --model "/tmp/q-$name-$q" --tokens "$TOKENS" \
              --batches "$QUANT_BATCHES" --runs 2 2>&1 | grep -v "^|---" | tee -a "$OUT/quant.log" || status=1
          done
        done
      fi
      rm -rf "/tmp/q-$name-$q"
    done
    [ "$src" = /tmp/bench-model ] || rm -rf "$src"
  done
fi
exit $status
