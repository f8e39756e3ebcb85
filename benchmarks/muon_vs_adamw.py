"""Muon vs AdamW at equal wall-clock: the same model, data and budget, each optimizer at its own best LR from a
small grid; held-out loss (the same validation sequences and masked positions for every run, as in
`autopilot_quality.py`) and tokens/s side by side.

    .venv/bin/python benchmarks/muon_vs_adamw.py --data DIR [--minutes 3] [--lrs 2.5e-3 5e-3 1e-2]
        [--objectives mlm causal] [--work DIR] [--table]

Each run is `cramlm train DATA --budget Mm --model M train.optimizer=OPT train.lr=LR` (batch and micro-batch
from the autopilot, as a user gets them), where M is the family member `cramlm train DATA --budget Mm` chooses
(`--model` replaces it). Rows are appended to WORK/muon.jsonl and skipped when already there, so the benchmark
runs in pieces; `--table` prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from quality_at_budget import SCORE

from cramlm.data.store import Dataset
from cramlm.eval.heldout import heldout_loss, unigram_loss
from cramlm.train.checkpoint import load_model

CRAMLM = Path(sys.executable).with_name("cramlm")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DEFAULT_MODEL = {"mlm": "encoder-2x128", "causal": "decoder-2x128"}  # the autopilot's choice at 3 CPU-minutes


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def run_one(data: Path, ds: Dataset, objective: str, model: str, optimizer: str, lr: float, minutes: float,
            work: Path) -> dict[str, Any]:
    run = work / "runs" / f"{objective}-{minutes:g}m-{optimizer}-lr{lr:g}"
    shutil.rmtree(run, ignore_errors=True)
    cmd = [str(CRAMLM), "train", str(data), "--budget", f"{minutes:g}m", "--model", model, "--out", str(run),
           f"train.optimizer={optimizer}", f"train.lr={lr}"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    res = json.loads((run / "results" / "train.json").read_text())
    trained, _ = load_model(run, DEVICE)
    loss = heldout_loss(trained, ds, objective, **SCORE)
    return {"objective": objective, "minutes": minutes, "model": model, "optimizer": optimizer, "lr": lr,
            "batch": res["autopilot"]["batch_size"], "steps": res["steps"], "tokens": res["tokens"],
            "tokens_per_s": res["tokens_per_second"], "mfu": res["mfu"], "loss": loss, "wall_s": wall,
            "unigram": unigram_loss(ds, objective=objective, **SCORE), "data": str(data)}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| objective | budget | model | optimizer | peak LR | batch | steps | tokens/s | held-out loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    best = {}
    for r in rows:
        key = (r["objective"], r["minutes"], r["optimizer"])
        if key not in best or r["loss"] < best[key]["loss"]:
            best[key] = r
    for r in sorted(rows, key=lambda r: (r["objective"], r["minutes"], r["optimizer"], r["lr"])):
        star = " **best**" if best[r["objective"], r["minutes"], r["optimizer"]] is r else ""
        lines.append(f"| {r['objective']} | {r['minutes']:g} min | {r['model']} | {r['optimizer']} | {r['lr']:.3g} | "
                     f"{r['batch']} | {r['steps']:,} | {r['tokens_per_s']:,.0f} | {r['loss']:.3f}{star} |")
    lines.append("")
    for objective, minutes in sorted({(r["objective"], r["minutes"]) for r in rows}):
        pair = [best.get((objective, minutes, o)) for o in ("adamw", "muon")]
        if all(pair):
            a, m = pair
            lines.append(f"{objective}, {minutes:g} min: Muon {m['loss']:.3f} vs AdamW {a['loss']:.3f} "
                         f"({m['loss'] - a['loss']:+.3f} nats) at {m['tokens_per_s'] / a['tokens_per_s']:.2f}x "
                         f"AdamW's tokens/s; unigram {a['unigram']:.3f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a dataset dir from `cramlm prepare`")
    ap.add_argument("--minutes", type=float, nargs="+", default=[3.0])
    ap.add_argument("--lrs", type=float, nargs="+", default=[2.5e-3, 5e-3, 1e-2])
    ap.add_argument("--objectives", nargs="+", default=["mlm", "causal"], choices=["mlm", "causal"])
    ap.add_argument("--optimizers", nargs="+", default=["adamw", "muon"], choices=["adamw", "muon"])
    ap.add_argument("--model", help="instead of the autopilot's 3-minute choice per objective")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cramlm-muon"))
    ap.add_argument("--table", action="store_true", help="print the table of WORK/muon.jsonl and stop")
    args = ap.parse_args()
    out = args.work / "muon.jsonl"
    if args.table:
        print(table(read_rows(out)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    ds = Dataset(args.data)
    for objective in args.objectives:
        for minutes in args.minutes:
            for optimizer in args.optimizers:
                for lr in args.lrs:
                    done = {(r["objective"], r["minutes"], r["optimizer"], r["lr"]) for r in read_rows(out)}
                    if (objective, minutes, optimizer, lr) in done:
                        continue
                    row = run_one(args.data, ds, objective, args.model or DEFAULT_MODEL[objective], optimizer, lr,
                                  minutes, args.work)
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"{objective} {minutes:g}m {optimizer} lr {lr:g}: loss {row['loss']:.4f}", flush=True)
    print(table(read_rows(out)))


if __name__ == "__main__":
    main()
