"""Caption a folder of photos with Ray Data, one vlm model per actor.

    python ray_caption.py --model Qwen/Qwen2.5-VL-7B-Instruct --input photos/ \\
        --output captions/ --concurrency 4

Ray Data reads the image files, hashes each file's bytes, drops the photos whose hash
is already captioned in --output (so an interrupted or repeated run only does the new
ones), and hands batches to ``Captioner`` actors: each loads the model once (one GPU per
actor with CUDA) and captions a batch in one ``describe_batch`` call. The rows —
path, sha256 of the file, caption, error, model — are appended to --output as Parquet
or JSON-lines files. docs/scale-out.md runs it on one machine and on a cluster.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

# What vlm decodes (docs/python.md); other files in the folder are left alone.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def list_photos(root: Path) -> list[str]:
    """Every image file below ``root``, sorted (so runs are reproducible)."""
    return sorted(
        str(p)
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def captioned_hashes(output: Path, fmt: str) -> set[str]:
    """The hashes already captioned in ``output`` (rows with an error are retried)."""
    if not output.is_dir():
        return set()
    done: set[str] = set()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for f in sorted(output.glob("*.parquet")):
            table = pq.read_table(f, columns=["hash", "caption"]).to_pydict()
            done.update(
                h for h, c in zip(table["hash"], table["caption"]) if c is not None
            )
    else:
        for f in sorted(output.glob("*.json")):
            for line in f.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    if row.get("caption") is not None:
                        done.add(row["hash"])
    return done


def skip_done(batch: dict[str, np.ndarray], done: set[str]) -> dict[str, np.ndarray]:
    """Adds each file's sha256 and drops the files already captioned. A task, not an
    actor: it holds a CPU only while it runs, so the reads and the model actors never
    wait for one another's CPUs."""
    hashes = np.array([hashlib.sha256(b).hexdigest() for b in batch["bytes"]], dtype=object)
    keep = np.array([h not in done for h in hashes], dtype=bool)
    return {"path": batch["path"][keep], "bytes": batch["bytes"][keep], "hash": hashes[keep]}


class Captioner:
    """One loaded model per Ray actor; each call captions one batch of photos."""

    def __init__(self, model: str, load: dict[str, Any], gen: dict[str, Any],
                 prompt: str | None, batch_size: int) -> None:
        import vlm  # imported in the actor: the driver never loads a model

        self.model = vlm.load(model, **load)
        self.name = Path(model.rstrip("/")).name
        self.gen = gen
        self.prompt = prompt
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        photos = [bytes(b) for b in batch["bytes"]]
        if self.prompt:
            results = self.model.ask_batch(
                [(p, self.prompt) for p in photos],
                batch_size=self.batch_size, on_error="return", **self.gen,
            )
        else:
            results = self.model.describe_batch(
                photos, batch_size=self.batch_size, on_error="return", **self.gen
            )
        ok = [isinstance(r, str) for r in results]
        return {
            "path": batch["path"],
            "hash": batch["hash"],
            "caption": np.array([r if k else None for r, k in zip(results, ok)], dtype=object),
            "error": np.array([None if k else f"{type(r).__name__}: {r}" for r, k in zip(results, ok)], dtype=object),
            "model": np.array([self.name] * len(photos)),
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--input", required=True, type=Path, help="folder of photos (searched recursively)")
    p.add_argument("--output", required=True, type=Path, help="folder the caption files are appended to")
    p.add_argument("--format", choices=["parquet", "jsonl"], default="parquet")
    p.add_argument("--concurrency", type=int, default=1, help="model actors (one per GPU with CUDA)")
    p.add_argument("--num-gpus", type=float, default=None,
                   help="GPUs per actor (default: 1 when this machine's vlm sees CUDA, else 0)")
    p.add_argument("--batch-size", type=int, default=8, help="photos per model call")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quant", default=None, help="int8 or int4")
    p.add_argument("--max-pixels", type=int, default=1003520,
                   help="image budget (Qwen-VL max_pixels; docs/models.md's album budget)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--prompt", default=None, help="ask this instead of the model's describe prompt")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray
    import vlm

    photos = list_photos(args.input)
    if not photos:
        print(f"no photos found in {args.input}", file=sys.stderr)
        return 1
    done = captioned_hashes(args.output, args.format)
    if not ray.is_initialized():
        ray.init(address=args.address)
    num_gpus = args.num_gpus if args.num_gpus is not None else (1.0 if vlm.cuda_available() else 0.0)
    load = {"device": args.device, "dtype": args.dtype, "quant": args.quant,
            "max_pixels": args.max_pixels}
    gen = {"max_new_tokens": args.max_new_tokens, "greedy": True}

    ds = ray.data.read_binary_files(photos, include_paths=True)
    ds = ds.map_batches(skip_done, fn_kwargs={"done": done})
    ds = ds.map_batches(
        Captioner,
        fn_constructor_args=(args.model, load, gen, args.prompt, args.batch_size),
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        num_gpus=num_gpus,
    )
    out = str(args.output.resolve())
    if args.format == "parquet":
        ds.write_parquet(out)
    else:
        ds.write_json(out)

    after = captioned_hashes(args.output, args.format)
    new = len(after - done)
    print(f"{new} photos captioned, {len(done)} skipped (already in {args.output}), "
          f"{len(photos) - len(after)} without a caption (see the error column)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
