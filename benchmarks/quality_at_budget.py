"""Quality per budget, the core claim of Cramming, on this machine: the same wall-clock budget and the same
width/depth for (a) the crammed recipe, (b) the original-BERT recipe (post-norm, dropout, biases, learned
positions, dense head, linear decay after a 1% warm-up, LR 1e-4, 15% masking) and (c) crammed without the batch
ramp; every model scored on the same held-out masked positions (15%, fixed seed), next to the unigram baseline.

    .venv/bin/python benchmarks/quality_at_budget.py [--minutes 15] [--source-mb 4] [--work /tmp/cramlm-bench]

The pretraining corpora (`../shared/data/pretrain`: Wikipedia + Gutenberg) are read from the first `--source-mb`
MB of every shard (a CPU run sees far fewer tokens than that) and prepared once into `--work`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import torch

from cramlm.config import DataConfig, resolve_config
from cramlm.data.prepare import prepare
from cramlm.data.store import Dataset
from cramlm.eval.heldout import heldout_loss, unigram_loss
from cramlm.train.checkpoint import load_model
from cramlm.train.trainer import train

PRETRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "pretrain"
CPU = ["train.batch_size=128", "train.micro_batch_size=32", "train.val_every=1000000steps", "train.val_batches=4",
       "train.checkpoint_every=1000000steps", "train.log_every=20", "budget.hardware=cpu"]
RECIPES = {
    "crammed": ("bert-crammed", "crammed", []),
    "original-bert": ("bert-original", "original-bert", []),
    "crammed, no batch ramp": ("bert-crammed", "crammed", ["train.batch_ramp=none"]),
}
SCORE = dict(mask_rate=0.15, n_batches=32, batch_size=32, seed=1234)


def subset(source_mb: float, out: Path) -> Path:
    """The first `source_mb` MB of documents of every pretraining shard, as one text file."""
    if out.is_file():
        return out
    parts = []
    for shard in sorted(PRETRAIN.glob("*/*.txt.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            parts.append(f.read(int(source_mb * 1e6)).rsplit("\n\n", 1)[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(parts))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget of each run (default 15)")
    ap.add_argument("--source-mb", type=float, default=4.0, help="MB read from each shard (default 4)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cramlm-bench"), help="data and run dirs")
    ap.add_argument("--layers", type=int, default=4, help="depth of every model (default 4)")
    ap.add_argument("--width", type=int, default=256, help="d_model of every model; heads of 64, FFN 4x (default 256)")
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES), help="subset of the recipes to run")
    args = ap.parse_args()

    data_dir = args.work / f"pretrain-{args.source_mb:g}mb"
    if not (data_dir / "manifest.json").is_file():
        text = subset(args.source_mb, args.work / f"pretrain-{args.source_mb:g}mb.txt")
        t0 = time.perf_counter()
        prepare([str(text)], data_dir, DataConfig(seq_len=128, vocab_size=8192, val_fraction=0.02), progress=False)
        print(f"prepared {data_dir} in {time.perf_counter() - t0:.0f}s")
    ds = Dataset(data_dir)
    print(f"{ds}; torch threads {torch.get_num_threads()}; budget {args.minutes:g} min per recipe")

    size = [f"model.n_layers={args.layers}", f"model.d_model={args.width}", f"model.n_heads={max(1, args.width // 64)}",
            f"model.d_ff={4 * args.width}"]
    rows = []
    for name in args.recipes:
        model, recipe, extra = RECIPES[name]
        cfg = resolve_config(model=model, recipe=recipe,
                             overrides=size + CPU + extra + [f"budget.limit={args.minutes * 60:g}s"])
        slug = name.replace(" ", "").replace(",", "-")
        run_dir = args.work / "runs" / f"{slug}-{time.strftime('%H%M%S')}"
        res = train(cfg, data_dir, run_dir, progress=False)
        trained, _ = load_model(run_dir)
        loss = heldout_loss(trained, ds, "mlm", **SCORE)
        rows.append((name, loss, res))
        print(f"{name:24s} held-out MLM loss {loss:.4f}  steps {res['steps']:5d}  tokens {res['tokens']:>10,}  "
              f"{res['tokens_per_second']:7.0f} tok/s  {res['seconds']:.0f}s", flush=True)

    base = unigram_loss(ds, **SCORE)
    print(f"\n| recipe (same {args.minutes:g}-minute budget, {args.layers}x{args.width}) | held-out MLM loss @15% "
          "| vs unigram | steps | tokens | tokens/s | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, loss, res in rows:
        print(f"| {name} | {loss:.3f} | {loss - base:+.3f} | {res['steps']} | {res['tokens']:,} | "
              f"{res['tokens_per_second']:.0f} | {res['seconds']:.0f} |")
    print(f"| unigram baseline | {base:.3f} | 0 | | | | |")
    best = min(rows, key=lambda r: r[1])
    print(f"\nbest: {best[0]}")
    (args.work / "quality_at_budget.json").write_text(json.dumps(
        {"minutes": args.minutes, "unigram": base, "runs": {n: {"heldout": l, **r} for n, l, r in rows}},
        indent=1, default=str))


if __name__ == "__main__":
    main()
