"""Writes a real-size MiniGPT-4 (Vicuna v0 7B) folder with random weights, in the release
layout vlm reads: eva_vit_g.pth (EVA ViT-g/14 state dict), blip2_pretrained_flant5xxl.pth
({'model': Q-Former, ln_vision, query_tokens}), pretrained_minigpt4.pth ({'model':
llama_proj}), llm/ (a LLaMA-7B HF folder from transformers, safetensors) and config.json.
Sizes are MiniGPT-4's: ViT-g 1408 wide, 39 blocks, MLP 6144; BERT-base Q-Former with 32
queries and cross-attention every 2 layers; LLaMA-7B. For speed only: random weights.

    python3 make_random_minigpt4.py TOKENIZER_MODEL OUT_DIR
"""
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

W, DEPTH, MLP, Q, QL, QI, QUERIES = 1408, 39, 6144, 768, 12, 3072, 32


def rnd(*shape, std=0.02):
    return (torch.randn(*shape) * std).half()


def vit():
    sd = {"cls_token": rnd(1, 1, W), "pos_embed": rnd(1, 257, W),
          "patch_embed.proj.weight": rnd(W, 3, 14, 14), "patch_embed.proj.bias": rnd(W)}
    for i in range(DEPTH):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": torch.ones(W).half(), p + "norm1.bias": rnd(W),
                   p + "attn.qkv.weight": rnd(3 * W, W), p + "attn.q_bias": rnd(W), p + "attn.v_bias": rnd(W),
                   p + "attn.proj.weight": rnd(W, W), p + "attn.proj.bias": rnd(W),
                   p + "norm2.weight": torch.ones(W).half(), p + "norm2.bias": rnd(W),
                   p + "mlp.fc1.weight": rnd(MLP, W), p + "mlp.fc1.bias": rnd(MLP),
                   p + "mlp.fc2.weight": rnd(W, MLP), p + "mlp.fc2.bias": rnd(W)})
    return sd


def attention(p, kv):
    return {p + "self.query.weight": rnd(Q, Q), p + "self.query.bias": rnd(Q),
            p + "self.key.weight": rnd(Q, kv), p + "self.key.bias": rnd(Q),
            p + "self.value.weight": rnd(Q, kv), p + "self.value.bias": rnd(Q),
            p + "output.dense.weight": rnd(Q, Q), p + "output.dense.bias": rnd(Q),
            p + "output.LayerNorm.weight": torch.ones(Q), p + "output.LayerNorm.bias": rnd(Q).float()}


def qformer():
    sd = {"query_tokens": rnd(1, QUERIES, Q).float(), "ln_vision.weight": torch.ones(W), "ln_vision.bias": rnd(W).float(),
          "Qformer.bert.embeddings.LayerNorm.weight": torch.ones(Q),
          "Qformer.bert.embeddings.LayerNorm.bias": rnd(Q).float()}
    for i in range(QL):
        p = f"Qformer.bert.encoder.layer.{i}."
        sd.update(attention(p + "attention.", Q))
        if i % 2 == 0:
            sd.update(attention(p + "crossattention.", W))
        sd.update({p + "intermediate_query.dense.weight": rnd(QI, Q), p + "intermediate_query.dense.bias": rnd(QI),
                   p + "output_query.dense.weight": rnd(Q, QI), p + "output_query.dense.bias": rnd(Q),
                   p + "output_query.LayerNorm.weight": torch.ones(Q), p + "output_query.LayerNorm.bias": rnd(Q).float()})
    return {k: v.float() for k, v in sd.items()}


def main():
    tok, out = Path(sys.argv[1]), Path(sys.argv[2])
    t = time.time()
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(vit(), out / "eva_vit_g.pth")
    torch.save({"model": qformer()}, out / "blip2_pretrained_flant5xxl.pth")
    torch.save({"model": {"llama_proj.weight": rnd(4096, Q).float(), "llama_proj.bias": rnd(4096).float()}},
               out / "pretrained_minigpt4.pth")
    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, rms_norm_eps=1e-6, max_position_embeddings=2048,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    with torch.device("cuda"):
        llm = LlamaForCausalLM(cfg).to(torch.float16)
    llm.save_pretrained(out / "llm", max_shard_size="4GB")
    shutil.copy(tok, out / "llm" / "tokenizer.model")
    (out / "config.json").write_text(json.dumps({
        "model_type": "minigpt4", "variant": "vicuna0", "language_model": "llm",
        "vision_weights": "eva_vit_g.pth", "qformer_weights": "blip2_pretrained_flant5xxl.pth",
        "projection_weights": "pretrained_minigpt4.pth"}, indent=2))
    print(f"random MiniGPT-4 (Vicuna v0 7B) written to {out} in {time.time() - t:.1f} s")


if __name__ == "__main__":
    main()
