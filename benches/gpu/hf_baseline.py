"""HF transformers baseline for vlm-bench: same model folder, same photo, same prompt
("Describe this photo in detail." through the checkpoint's chat template; for a checkpoint
without one, i.e. BLIP-2, plain captioning with an empty prompt, as vlm's describe does),
greedy, exactly N new tokens, SDPA attention, bf16.

Three ways to run the same model, each a row (issue #23, fair baselines):
  user     the script most users write: from_pretrained(device_map="cuda"), the processor
           called inside the timed region on every call;
  to_cuda  the model moved with .to("cuda") instead, processor still timed;
  fastest  .to("cuda"), inputs prepared and moved to the GPU outside the timed region,
           torch.inference_mode: the fastest honest HF configuration we know (ratios are
           taken against this row).

    python3 hf_baseline.py MODEL_DIR PHOTO.png [--tokens 64] [--batches 8] [--runs 3]
                           [--paths user,to_cuda,fastest] [--json OUT.json]
"""
import argparse
import gc
import json
import statistics
import time

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

PROMPT = "Describe this photo in detail."
PATHS = ("user", "to_cuda", "fastest")


def sync():
    torch.cuda.synchronize()


def load(model_dir, path):
    t = time.time()
    kwargs = dict(dtype=torch.bfloat16, attn_implementation="sdpa")
    if path == "user":
        model = AutoModelForImageTextToText.from_pretrained(model_dir, device_map="cuda", **kwargs)
    else:
        model = AutoModelForImageTextToText.from_pretrained(model_dir, **kwargs).to("cuda")
    model.eval()
    sync()
    return model, time.time() - t


def measure(model, processor, text, image, a, path):
    gen = dict(do_sample=False, repetition_penalty=1.0, temperature=None, top_p=None, top_k=None)
    processor.tokenizer.padding_side = "left"
    prepared = {}

    def inputs_for(batch):
        return processor(text=[text] * batch, images=[image] * batch, return_tensors="pt", padding=True).to("cuda")

    def run(batch, new_tokens):
        if path == "fastest" and batch not in prepared:
            prepared[batch] = inputs_for(batch)
            sync()
        t0 = time.time()
        inputs = prepared[batch] if path == "fastest" else inputs_for(batch)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **gen)
        sync()
        assert out.shape[1] - inputs["input_ids"].shape[1] == new_tokens
        return time.time() - t0, inputs

    t = time.time()
    run(1, 2)
    first_call_s = time.time() - t

    walls, ttfts = [], []
    for _ in range(a.runs):
        walls.append(run(1, a.tokens)[0])
        ttfts.append(run(1, 1)[0])
    per_photo = statistics.median(walls)
    ttft = statistics.median(ttfts)
    _, inputs = run(1, 1)
    prompt_tokens = inputs["input_ids"].shape[1]

    # Vision tower alone (pixel values already on the GPU).
    vis = []
    for _ in range(a.runs):
        sync()
        t0 = time.time()
        with torch.inference_mode():
            if "image_grid_thw" in inputs:  # Qwen-VL
                model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
            else:  # BLIP-2: ViT, Q-Former and projection
                model.get_image_features(inputs["pixel_values"])
        sync()
        vis.append(time.time() - t0)
    decode_tps = (a.tokens - 1) / (per_photo - ttft)

    rows = [(1, 1 / per_photo)]
    for b in [int(x) for x in a.batches.split(",") if x and int(x) > 1]:
        run(min(b, 2), 2)
        wall, _ = run(b, a.tokens)
        rows.append((b, b / wall))
    return dict(first_call_s=first_call_s, prompt_tokens=prompt_tokens, vision_ms=statistics.median(vis) * 1e3,
                ttft_ms=ttft * 1e3, decode_tokens_per_s=decode_tps, per_photo_s=per_photo, per_photo_runs_s=walls,
                peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                throughput=[dict(batch=b, photos_per_s=p) for b, p in rows])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("photo")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batches", default="8")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--paths", default=",".join(PATHS), help="which of user,to_cuda,fastest to run")
    ap.add_argument("--json")
    ap.add_argument("--max-pixels", type=int, help="Qwen-VL pixel budget (default: the checkpoint's)")
    ap.add_argument("--min-pixels", type=int)
    a = ap.parse_args()
    paths = [p for p in a.paths.split(",") if p]
    assert all(p in PATHS for p in paths), f"--paths takes {PATHS}"

    # A budget given to from_pretrained reaches the image processor's size; at call time
    # transformers 5.17 applies min/max_pixels only when both are given.
    budget = {k: v for k, v in (("max_pixels", a.max_pixels), ("min_pixels", a.min_pixels)) if v}
    processor = AutoProcessor.from_pretrained(a.model, **budget)
    image = Image.open(a.photo).convert("RGB")
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
    else:
        text = ""  # BLIP-2: captioning (the processor puts the image tokens and BOS in front)

    results = {}
    # "model" is the same path with a different load; the "fastest" and "to_cuda" paths
    # share one .to("cuda") model.
    for path in paths:
        if path == "fastest" and "to_cuda" in results:
            model, load_s = shared
        else:
            model, load_s = load(a.model, path)
            shared = (model, load_s)
        torch.cuda.reset_peak_memory_stats()
        results[path] = dict(load_s=load_s, **measure(model, processor, text, image, a, path))
        if path == "user":
            del model, shared
            gc.collect()
            torch.cuda.empty_cache()

    print("| HF transformers bf16 sdpa | load s | first call s | prompt tok | vision ms | TTFT ms | decode tok/s | s/photo (b=1) | peak GiB (torch) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path, r in results.items():
        print(f"| {path} | {r['load_s']:.2f} | {r['first_call_s']:.2f} | {r['prompt_tokens']} | {r['vision_ms']:.1f} | "
              f"{r['ttft_ms']:.1f} | {r['decode_tokens_per_s']:.1f} | {r['per_photo_s']:.3f} | {r['peak_gib']:.1f} |")
    print()
    print("| path | " + " | ".join(f"b={t['batch']} photos/s" for t in next(iter(results.values()))["throughput"]) + " |")
    print("|---|" + "---|" * len(next(iter(results.values()))["throughput"]))
    for path, r in results.items():
        print(f"| {path} | " + " | ".join(f"{t['photos_per_s']:.2f}" for t in r["throughput"]) + " |")
    if a.json:
        # Top level: the fastest path run (ratios are against it); every path under "paths".
        best = results.get("fastest") or next(iter(results.values()))
        with open(a.json, "w") as f:
            json.dump(dict(best, paths=results), f, indent=2)


if __name__ == "__main__":
    main()
