"""Tune small, train big: does the best learning rate hold across widths, under muP and under the standard
parametrization? And what does tuning on a narrow proxy buy against a full grid at the target width?

    .venv/bin/python benchmarks/mup_transfer.py --data DIR [--widths 32 64 128 256 512] [--proxy 128]
        [--lr 1.25e-3..2e-2] [--trials 5] [--budget 300000tokens] [--depth 2] [--work DIR]
        [SECTION.KEY=VALUE ...]

One `cramlm sweep DATA --parametrization both train.optimizer=adamw` over every width and LR (equal tokens per
trial, depth fixed; resumable; an override `train.optimizer=muon` sweeps Muon), then from its sweep.json:
- transfer: the best LR per width under each parametrization, and how far it moves from the narrowest to the
  widest width;
- payoff: the best muP LR at the proxy width, applied at the widest width (read from the same grid: the trial is
  exactly what `cramlm train --config` of the sweep's recipe runs), against the best of the full grid at the widest
  width, and the proxy column's cost against the wide column's.
`cramlm report WORK/sweep` draws loss against LR per width, standard and muP side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CRAMLM = Path(sys.executable).with_name("cramlm")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    ap.add_argument("--proxy", type=int, default=128, help="the width tuned on (default 128)")
    ap.add_argument("--lr", default="1.25e-3..2e-2", help="LR range of the sweep (default 1.25e-3..2e-2)")
    ap.add_argument("--trials", type=int, default=5, help="LRs in the range, log-spaced (default 5: factor 2)")
    ap.add_argument("--budget", default="300000tokens", help="budget of each trial (default 300000tokens)")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cramlm-mup"))
    ap.add_argument("overrides", nargs="*", help="config overrides for every trial (e.g. train.batch_size=16)")
    args = ap.parse_args()
    sweep_dir = args.work / "sweep"
    cmd = [str(CRAMLM), "sweep", str(args.data), "--budget", args.budget, "--widths", ",".join(map(str, args.widths)),
           "--lr", args.lr, "--trials", str(args.trials), "--depth", str(args.depth), "--parametrization", "both",
           "--out", str(sweep_dir), "train.optimizer=adamw", *args.overrides]  # the published grid: AdamW
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)

    trials = json.loads((sweep_dir / "sweep.json").read_text())["trials"]
    done = [t for t in trials if t["status"] == "completed"]

    def column(p: str, w: int) -> list[dict]:
        return [t for t in done if t["parametrization"] == p and t["width"] == w]

    def shown(t: dict) -> str:
        return "diverged" if t["loss"] is None else f"{t['loss']:.3f}"

    def best(p: str, w: int) -> dict:
        return min((t for t in column(p, w) if t["loss"] is not None), key=lambda t: t["loss"])

    narrow, wide = min(args.widths), max(args.widths)
    print("\n| parametrization | " + " | ".join(f"best LR at width {w}" for w in args.widths) + " | moves |")
    print("|---|" + "---|" * (len(args.widths) + 1))
    for p in ("standard", "mup"):
        lrs = [best(p, w)["lr"] for w in args.widths]
        print(f"| {p} | " + " | ".join(f"{lr:.3g} ({best(p, w)['loss']:.3f})" for lr, w in zip(lrs, args.widths))
              + f" | x{lrs[-1] / lrs[0]:.2g} from {narrow} to {wide} |")
    for p in ("standard", "mup"):
        tuned = best(p, args.proxy)["lr"]
        at_wide = next(t for t in column(p, wide) if t["lr"] == tuned)
        grid = best(p, wide)
        proxy_flops = sum(t["flops"] for t in column(p, args.proxy))
        grid_flops = sum(t["flops"] for t in column(p, wide))
        print(f"\npayoff ({p}): LR {tuned:.3g} tuned at width {args.proxy} gives {shown(at_wide)} at width "
              f"{wide}; the full grid's best there is {grid['loss']:.3f} (LR {grid['lr']:.3g}): "
              f"{(at_wide['loss'] or float('inf')) - grid['loss']:+.3f} nats, at {proxy_flops / grid_flops:.2f}x the grid's cost "
              f"({proxy_flops:.3g} vs {grid_flops:.3g} FLOPs)")


if __name__ == "__main__":
    main()
