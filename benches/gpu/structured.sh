#!/usr/bin/env bash
# Run on the GPU machine after build.sh (needs .devbin/vlm.xz, assets, device-env.sh): OUT=dir bash benches/gpu/structured.sh
# Decode speed with and without a constraint on a random Qwen2.5-VL-7B (bf16, H200).
set -u
python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' .devbin/vlm.xz /tmp/vlm && chmod +x /tmp/vlm
. .devbin/device-env.sh /tmp/vlm > "$OUT/env.log" 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 benches/gpu/make_random_model.py .devbin/assets/Qwen2.5-VL-7B-Instruct /tmp/m 2>&1 | tail -2
python3 -c 'from PIL import Image; import numpy as np; Image.fromarray((np.random.default_rng(0).random((768,1024,3))*255).astype("uint8")).save("/tmp/p.png")'
echo '{"type": "string", "minLength": 600, "maxLength": 600}' > /tmp/string.json
cat > /tmp/record.json <<'J'
{"type": "object", "properties": {"caption": {"type": "string"}, "scene": {"enum": ["indoor", "outdoor"]}, "people": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["caption", "scene", "people", "tags"]}
J
common=(--model /tmp/m --image /tmp/p.png --device cuda --dtype bf16 --greedy --max-new-tokens 64 --json)
run() { /tmp/vlm ask "${common[@]}" "$@" "Describe this photo." 2>>"$OUT/err.log" | python3 -c 'import json,sys
d=json.load(sys.stdin); t=d["timings"]; print(sys.argv[1], "tokens", len(d["token_ids"]), d["finish_reason"], "preprocess_ms %.1f prefill_ms %.1f decode_ms %.1f tok/s %.1f" % (t["preprocess"]*1e3, t["prefill"]*1e3, t["decode"]*1e3, t["decode_tokens_per_second"]), repr(d["text"][:60]))' "$label"; }
label=warmup run --min-new-tokens 64
for i in 1 2 3; do
  label=free run --min-new-tokens 64
  label=string600 run --json-schema /tmp/string.json
  label=record run --json-schema /tmp/record.json
done
for v in VLM_CUDA_GRAPH=0; do
  export "$v"; label="free $v" run --min-new-tokens 64; label="string600 $v" run --json-schema /tmp/string.json; unset "${v%%=*}"
done
/tmp/vlm locate --model /tmp/m --image /tmp/p.png --device cuda --dtype bf16 --max-new-tokens 64 --json "the cake" 2>>"$OUT/err.log" | head -c 600; echo
tail -5 "$OUT/err.log"
