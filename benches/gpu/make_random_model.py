"""Writes a real-size Qwen-VL checkpoint with random weights (HF transformers' own init,
seeded) next to the real config, tokenizer, preprocessor and chat-template files, so that
vlm-bench and the HF baseline load the very same safetensors from local disk.

    python3 make_random_model.py ASSET_DIR OUT_DIR [--dtype bfloat16] [--seed 0] [--device cuda]
"""
import argparse
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

COPY = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.json",
        "processor_config.json", "special_tokens_map.json", "added_tokens.json",
        "chat_template.jinja", "preprocessor_config.json", "generation_config.json", "config.json"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("assets")
    ap.add_argument("out")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", help="where the init runs (cpu: slower, no GPU needed)")
    a = ap.parse_args()
    t = time.time()
    config = AutoConfig.from_pretrained(a.assets)
    torch.manual_seed(a.seed)
    with torch.device(a.device):
        model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, a.dtype))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size="4GB")
    for name in COPY:  # the real files win over what save_pretrained wrote
        src = Path(a.assets) / name
        if src.exists():
            shutil.copy(src, out / name)
    n = sum(p.numel() for p in model.parameters())
    print(f"random {config.model_type}: {n / 1e9:.2f} B parameters written to {out} in {time.time() - t:.1f} s")


if __name__ == "__main__":
    main()
