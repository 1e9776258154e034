"""Summarises an Nsight Compute CSV (`ncu --csv --page raw --metrics gpu__time_duration.sum`)
of one profiled call: GPU time and launch count per kernel, largest first, and the total.
The kernels ran one at a time under ncu, so their sum is the GPU's busy time; the same call's
wall-clock without ncu (vlm-bench's table) minus that sum is time the GPU sat idle waiting for
the host.

    python3 ncu_summary.py ncu.csv [--top 40] [--last-step]

--last-step keeps only the launches from the last embedding lookup on (the last decode step of
the call) and groups them by kernel and grid size as well, so that one kernel's launches for
products of different widths (q/k/v, o_proj and down, gate/up) stand apart, with µs per launch.
"""

import argparse
import csv
import re
import sys
from collections import defaultdict


def short_name(name: str) -> str:
    # Template arguments and parameter lists make every instantiation distinct; the base
    # name is what tells the stages apart.
    name = re.sub(r"\(.*$", "", name)
    name = re.sub(r"<.*>", "<…>", name)
    return name[:90]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--last-step", action="store_true")
    args = ap.parse_args()
    with open(args.csv, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu prints its own log lines first
    rows = list(csv.reader(lines))
    if len(rows) < 3:
        print(f"no kernels in {args.csv}")
        return 1
    header = rows[0]
    name_col = header.index("Kernel Name")
    time_col = header.index("gpu__time_duration.sum")
    grid_col = header.index("Grid Size")
    kernels = rows[2:]
    if args.last_step:
        starts = [i for i, r in enumerate(kernels) if len(r) > name_col and r[name_col].startswith("embed")]
        kernels = kernels[starts[-1]:] if starts else kernels
    unit = rows[1][time_col]
    scale = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0}.get(unit, 1e-6)
    total = defaultdict(float)
    count = defaultdict(int)
    for r in kernels:
        try:
            t = float(r[time_col].replace(",", "")) * scale
        except (ValueError, IndexError):
            continue
        k = short_name(r[name_col])
        if args.last_step:
            k = f"{k} {r[grid_col]}"
        total[k] += t
        count[k] += 1
    launches = sum(count.values())
    busy = sum(total.values())
    print(f"{launches} kernels, {busy:.2f} ms of GPU time")
    print("| kernel | launches | ms | share | µs each |")
    print("|---|---|---|---|---|")
    for k, t in sorted(total.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| {k} | {count[k]} | {t:.3f} | {100 * t / busy:.1f}% | {1000 * t / count[k]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
