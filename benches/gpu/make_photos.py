"""Writes N distinct phone-size JPEGs (default 4032x3024) for the album benchmark:
smooth gradients with a few shapes, so each file is a realistic ~1-2 MB and every photo
has its own content hash. Usage: make_photos.py OUT_DIR N [WIDTH HEIGHT]"""

import os
import sys
from multiprocessing import Pool

import numpy as np
from PIL import Image, ImageDraw


def make(args):
    out, i, w, h = args
    rng = np.random.default_rng(i)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    base = rng.uniform(0, 255, size=(3, 3)).astype(np.float32)
    rgb = np.stack([base[c, 0] + base[c, 1] * x * 0.5 + base[c, 2] * y * 0.5 for c in range(3)], axis=-1)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        # Shapes of at least 50 px, or a sixth of a small image (vlm compare's 96x64 photos).
        x1 = x0 + int(rng.uniform(min(50, w / 6), w / 3))
        y1 = y0 + int(rng.uniform(min(50, h / 6), h / 3))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.uniform() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=color)
    path = os.path.join(out, f"IMG_{i:05d}.jpg")
    img.save(path, quality=90)
    return os.path.getsize(path)


def main():
    out, n = sys.argv[1], int(sys.argv[2])
    w, h = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (4032, 3024)
    os.makedirs(out, exist_ok=True)
    with Pool() as pool:
        sizes = pool.map(make, [(out, i, w, h) for i in range(n)])
    print(f"{n} photos {w}x{h} in {out}: {sum(sizes) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
