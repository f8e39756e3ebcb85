"""Does data pruning help a budgeted MLM run? The same tiny crammed model (4x256) trained on the same number of
TOKENS from (a) all documents, (b) the 70% hardest by the cluster scorer (distance to the nearest k-means centroid,
Sorscher et al. 2022), (c) a seeded random subset of the same size and (d) the 70% hardest by the proxy-loss
scorer; every model scored on the same held-out validation sequences and masked positions.

    .venv/bin/python benchmarks/prune_quality.py [--pool-mb 8] [--keep 0.7] [--work /tmp/cramlm-prune]

Granularity: the pretraining documents are whole Wikipedia articles and whole Gutenberg books (333 books hold
half the text), too coarse to prune by; the pool is made of *passages* (consecutive paragraphs of one document,
at least `--passage-chars` characters), drawn at random from all six shards of `../shared/data/pretrain`, and
pruning keeps or drops passages. The validation split is held out before pruning: every arm is prepared with the
full run's tokenizer and the same `val_fraction`, and a passage's split depends only on its text's hash, so no arm
trains on a validation passage; all arms are scored on the full run's validation split.

Regime: the token budget defaults to one pass over the cluster-pruned training set (about 0.7 of a pass over all
documents): data is abundant for every arm, nothing is repeated, which is where Sorscher et al. expect keeping the
hard examples to pay. Compare by tokens, not wall time, so a loaded machine cannot bias the result.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import time
from pathlib import Path

from quality_at_budget import CPU, PRETRAIN, SCORE

from cramlm.config import DataConfig, PruneConfig, resolve_config
from cramlm.data.prepare import prepare
from cramlm.data.store import Dataset
from cramlm.eval.heldout import heldout_loss, unigram_loss
from cramlm.train.checkpoint import load_model
from cramlm.train.trainer import train

CORPUS_BYTES = 262_000_000  # uncompressed size of the six shards (SOURCES.md)


def passages(document: str, min_chars: int) -> list[str]:
    """Consecutive paragraphs (lines) of one document, grouped until each holds at least `min_chars` characters."""
    out, cur, n = [], [], 0
    for line in document.split("\n"):
        cur.append(line)
        n += len(line)
        if n >= min_chars:
            out.append("\n".join(cur))
            cur, n = [], 0
    if cur and n >= min_chars // 4:
        out.append("\n".join(cur))
    return out


def build_pool(pool_mb: float, passage_chars: int, seed: int, out: Path) -> list[str]:
    """A seeded random sample of about `pool_mb` MB of passages from every pretraining shard, also written to `out`
    (one passage per blank-line-separated document)."""
    shards = sorted(PRETRAIN.glob("*/*.txt.gz"))
    rate = pool_mb * 1e6 / CORPUS_BYTES
    rng = random.Random(seed)
    pool = []
    for shard in shards:
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            for doc in f.read().split("\n\n"):
                pool += [p for p in passages(doc.strip(), passage_chars) if rng.random() < rate]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(pool) + "\n")
    return pool


def prepared(name: str, text: Path, work: Path, cfg: DataConfig) -> Dataset:
    """Prepare one arm's dataset once (re-runs reuse it) and say what pruning kept."""
    out = work / name
    if not (out / "manifest.json").is_file():
        t0 = time.perf_counter()
        prepare([str(text)], out, cfg, progress=False)
        print(f"prepared {name} in {time.perf_counter() - t0:.0f}s", flush=True)
    return Dataset(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool-mb", type=float, default=8.0, help="MB of passages drawn from the corpus (default 8)")
    ap.add_argument("--passage-chars", type=int, default=2000, help="minimum characters per passage (default 2000)")
    ap.add_argument("--keep", type=float, default=0.7, help="fraction of passages pruning keeps (default 0.7)")
    ap.add_argument("--budget-tokens", type=int, default=0,
                    help="training tokens per arm (default 0 = one pass over the cluster-pruned train split)")
    ap.add_argument("--arms", nargs="*", default=["cluster", "random", "full", "proxy"], help="arms to train, in order")
    ap.add_argument("--noise-seeds", type=int, nargs="*", default=[1],
                    help="extra training seeds of the random arm, for seed-to-seed noise (default 1)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cramlm-prune"), help="data and run dirs")
    args = ap.parse_args()

    pool_file = args.work / f"pool-{args.pool_mb:g}mb.txt"
    pool = build_pool(args.pool_mb, args.passage_chars, 0, pool_file) if not pool_file.is_file() else \
        pool_file.read_text().rstrip("\n").split("\n\n")
    base = DataConfig(seq_len=128, vocab_size=8192, val_fraction=0.06)
    full = prepared("full", pool_file, args.work, base)
    tok = str(full.root / "tokenizer.json")
    data = {"full": full}
    for method in ("cluster", "proxy"):
        if method in args.arms:
            cfg = base.model_copy(update={"tokenizer_file": tok, "prune": PruneConfig(method=method, keep=args.keep)})
            data[method] = prepared(method, pool_file, args.work, cfg)
    if "random" in args.arms:
        pruned = data["cluster"].manifest["dropped"].get("pruned", 0) if "cluster" in data else \
            round((1 - args.keep) * len(pool))
        rand_file = args.work / "random.txt"
        if not rand_file.is_file():
            rand_file.write_text("\n\n".join(random.Random(1).sample(pool, len(pool) - pruned)) + "\n")
        data["random"] = prepared("random", rand_file, args.work, base.model_copy(update={"tokenizer_file": tok}))

    def train_tokens(ds: Dataset) -> int:
        return len(ds.sequences("train")) * ds.seq_len

    budget = args.budget_tokens or train_tokens(data["cluster"] if "cluster" in data else full)
    print(f"pool {len(pool):,} passages of >= {args.passage_chars} chars ({pool_file}); validation: {full}; "
          f"budget {budget:,} tokens per arm", flush=True)

    runs = [(arm, 0) for arm in args.arms] + [("random", s) for s in args.noise_seeds if "random" in args.arms]
    rows = []
    for arm, seed in runs:
        ds = data[arm]
        cfg = resolve_config(model="tiny", recipe="crammed",
                             overrides=CPU + [f"budget.limit={budget}tokens", f"train.seed={seed}"])
        run_dir = args.work / "runs" / f"{arm}-seed{seed}-{time.strftime('%H%M%S')}"
        res = train(cfg, ds.root, run_dir, progress=False)
        model, _ = load_model(run_dir)
        loss = heldout_loss(model, full, "mlm", **SCORE)
        m = ds.manifest
        row = {"arm": arm, "seed": seed, "loss": loss, "documents": m["splits"]["train"]["documents"],
               "train_tokens": train_tokens(ds), "epochs": res["tokens"] / train_tokens(ds), **res}
        rows.append(row)
        print(f"{arm:8s} seed {seed}  held-out MLM loss {loss:.4f}  train docs {row['documents']:,}  "
              f"train tokens {row['train_tokens']:,}  seen {res['tokens']:,} ({row['epochs']:.2f} epochs)  "
              f"steps {res['steps']}  {res['tokens_per_second']:.0f} tok/s", flush=True)
        (args.work / "prune_quality.json").write_text(json.dumps({"budget": budget, "rows": rows}, indent=1,
                                                                 default=str))

    uni = unigram_loss(full, **SCORE)
    print(f"\n| arm (tiny 4x256 crammed, {budget:,} tokens each) | train passages | train tokens | epochs seen "
          "| held-out MLM loss @15% | vs full |")
    print("|---|---|---|---|---|---|")
    ref = next((r["loss"] for r in rows if r["arm"] == "full" and r["seed"] == 0), None)
    for r in rows:
        delta = f"{r['loss'] - ref:+.3f}" if ref is not None else ""
        print(f"| {r['arm']} (seed {r['seed']}) | {r['documents']:,} | {r['train_tokens']:,} | {r['epochs']:.2f} | "
              f"{r['loss']:.3f} | {delta} |")
    print(f"| unigram baseline | | | | {uni:.3f} | |")


if __name__ == "__main__":
    main()
