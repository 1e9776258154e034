"""HF transformers baseline for vlm-bench: same model folder, same photo, same prompt
("Describe this photo in detail." through the checkpoint's chat template; for a checkpoint
without one, i.e. BLIP-2, plain captioning with an empty prompt, as vlm's describe does),
greedy, exactly N new tokens, SDPA attention, bf16.

    python3 hf_baseline.py MODEL_DIR PHOTO.png [--tokens 64] [--batches 8] [--runs 3]
"""
import argparse
import json
import statistics
import time

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

PROMPT = "Describe this photo in detail."


def sync():
    torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("photo")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batches", default="8")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--max-pixels", type=int, help="Qwen-VL pixel budget (default: the checkpoint's)")
    ap.add_argument("--min-pixels", type=int)
    a = ap.parse_args()

    t = time.time()
    model = AutoModelForImageTextToText.from_pretrained(a.model, dtype=torch.bfloat16, attn_implementation="sdpa",
                                                        device_map="cuda")
    # A budget given to from_pretrained reaches the image processor's size; at call time
    # transformers 5.17 applies min/max_pixels only when both are given.
    budget = {k: v for k, v in (("max_pixels", a.max_pixels), ("min_pixels", a.min_pixels)) if v}
    processor = AutoProcessor.from_pretrained(a.model, **budget)
    sync()
    load_s = time.time() - t

    image = Image.open(a.photo).convert("RGB")
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
    else:
        text = ""  # BLIP-2: captioning (the processor puts the image tokens and BOS in front)
    gen = dict(do_sample=False, repetition_penalty=1.0, temperature=None, top_p=None, top_k=None)

    def run(batch, new_tokens):
        processor.tokenizer.padding_side = "left"
        t0 = time.time()
        inputs = processor(text=[text] * batch, images=[image] * batch, return_tensors="pt", padding=True).to("cuda")
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
        with torch.no_grad():
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
    peak = torch.cuda.max_memory_allocated() / 2**30

    print("| engine | load s | first call s | prompt tok | vision ms | TTFT ms | decode tok/s | s/photo (b=1) | peak GiB (torch) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| HF transformers bf16 sdpa | {load_s:.2f} | {first_call_s:.2f} | {prompt_tokens} | "
          f"{statistics.median(vis) * 1e3:.1f} | {ttft * 1e3:.1f} | {decode_tps:.1f} | {per_photo:.3f} | {peak:.1f} |")
    print()
    print("| batch | photos/s |")
    print("|---|---|")
    for b, p in rows:
        print(f"| {b} | {p:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(load_s=load_s, first_call_s=first_call_s, prompt_tokens=prompt_tokens,
                           vision_ms=statistics.median(vis) * 1e3, ttft_ms=ttft * 1e3, decode_tokens_per_s=decode_tps,
                           per_photo_s=per_photo, per_photo_runs_s=walls, peak_gib=peak,
                           throughput=[dict(batch=b, photos_per_s=p) for b, p in rows]), f, indent=2)


if __name__ == "__main__":
    main()
