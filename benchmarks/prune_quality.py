"""Does data pruning help a budgeted MLM run? The same crammed encoder (default 4x256, the tiny preset) trained
on the same number of TOKENS from (a) all documents, (b) the 70% hardest by the cluster scorer (distance to the
nearest k-means centroid, Sorscher et al. 2022), (c) a seeded random subset of the same size and (d) the 70%
hardest by the proxy-loss scorer; every model scored on the same held-out validation sequences and masked positions.

    .venv/bin/python benchmarks/prune_quality.py [--pool-mb 8] [--keep 0.7] [--layers 4 --width 256] [--work DIR]
    .venv/bin/python benchmarks/prune_quality.py ... --arms cluster full --seeds 1   # add seed-to-seed noise rows

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
    ap.add_argument("--layers", type=int, default=4, help="depth of every model (default 4, the tiny preset)")
    ap.add_argument("--width", type=int, default=256, help="d_model; heads of 64, FFN 4x (default 256)")
    ap.add_argument("--batch-size", type=int, default=128, help="sequences per optimizer step (default 128)")
    ap.add_argument("--val-fraction", type=float, default=0.06, help="passages held out (default 0.06)")
    ap.add_argument("--budget-tokens", type=int, default=0,
                    help="training tokens per arm (default 0 = one pass over the cluster-pruned train split)")
    ap.add_argument("--arms", nargs="*", default=["cluster", "random", "full", "proxy"], help="arms to train, in order")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0],
                    help="training seeds (init and batch order) of every arm; rows of earlier calls with the same "
                    "budget and model stay in the table, so a second call with --seeds 1 adds the noise (default 0)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cramlm-prune"), help="data and run dirs")
    args = ap.parse_args()

    pool_file = args.work / f"pool-{args.pool_mb:g}mb.txt"
    pool = build_pool(args.pool_mb, args.passage_chars, 0, pool_file) if not pool_file.is_file() else \
        pool_file.read_text().rstrip("\n").split("\n\n")
    base = DataConfig(seq_len=128, vocab_size=8192, val_fraction=args.val_fraction)
    full = prepared("full", pool_file, args.work, base)
    tok = str(full.root / "tokenizer.json")
    data = {"full": full}
    for method in ("cluster", "proxy"):  # cluster always: it sets the budget and the random arm's size
        if method in args.arms or method == "cluster":
            cfg = base.model_copy(update={"tokenizer_file": tok, "prune": PruneConfig(method=method, keep=args.keep)})
            data[method] = prepared(method, pool_file, args.work, cfg)
    if "random" in args.arms:
        pruned = data["cluster"].manifest["dropped"].get("pruned", 0)
        rand_file = args.work / "random.txt"
        if not rand_file.is_file():
            rand_file.write_text("\n\n".join(random.Random(1).sample(pool, len(pool) - pruned)) + "\n")
        data["random"] = prepared("random", rand_file, args.work, base.model_copy(update={"tokenizer_file": tok}))

    def train_tokens(ds: Dataset) -> int:
        return len(ds.sequences("train")) * ds.seq_len

    budget = args.budget_tokens or train_tokens(data["cluster"])
    print(f"pool {len(pool):,} passages of >= {args.passage_chars} chars ({pool_file}); validation: {full}; "
          f"budget {budget:,} tokens per arm", flush=True)

    size = [f"model.n_layers={args.layers}", f"model.d_model={args.width}",
            f"model.n_heads={max(1, args.width // 64)}", f"model.d_ff={4 * args.width}"]
    results = args.work / "prune_quality.json"
    setup = {"budget": budget, "layers": args.layers, "width": args.width, "batch_size": args.batch_size}
    old = json.loads(results.read_text()) if results.is_file() else {}
    rows = old.get("rows", []) if old.get("setup") == setup else []
    for arm in args.arms:
        for seed in args.seeds:
            ds = data[arm]
            cfg = resolve_config(model="tiny", recipe="crammed", overrides=CPU + size + [
                f"train.batch_size={args.batch_size}", f"budget.limit={budget}tokens", f"train.seed={seed}"])
            run_dir = args.work / "runs" / f"{arm}-seed{seed}-{time.strftime('%H%M%S')}"
            res = train(cfg, ds.root, run_dir, progress=False)
            model, _ = load_model(run_dir)
            loss = heldout_loss(model, full, "mlm", **SCORE)
            row = {"arm": arm, "seed": seed, "loss": loss, "documents": ds.manifest["splits"]["train"]["documents"],
                   "train_tokens": train_tokens(ds), "epochs": res["tokens"] / train_tokens(ds), **res}
            rows = [r for r in rows if (r["arm"], r["seed"]) != (arm, seed)] + [row]
            print(f"{arm:8s} seed {seed}  held-out MLM loss {loss:.4f}  train docs {row['documents']:,}  "
                  f"train tokens {row['train_tokens']:,}  seen {res['tokens']:,} ({row['epochs']:.2f} epochs)  "
                  f"steps {res['steps']}  {res['tokens_per_second']:.0f} tok/s", flush=True)
            results.write_text(json.dumps({"setup": setup, "rows": rows}, indent=1, default=str))

    uni = unigram_loss(full, **SCORE)
    print(f"\n| arm ({args.layers}x{args.width} crammed, {budget:,} tokens each) | train passages | train tokens "
          "| epochs seen | held-out MLM loss @15% | vs full (seed mean) |")
    print("|---|---|---|---|---|---|")
    order = ["full", "cluster", "random", "proxy"]
    rows.sort(key=lambda r: (order.index(r["arm"]), r["seed"]))
    ref = [r["loss"] for r in rows if r["arm"] == "full"]
    for r in rows:
        delta = f"{r['loss'] - sum(ref) / len(ref):+.3f}" if ref else ""
        print(f"| {r['arm']} (seed {r['seed']}) | {r['documents']:,} | {r['train_tokens']:,} | {r['epochs']:.2f} | "
              f"{r['loss']:.3f} | {delta} |")
    print(f"| unigram baseline | | | | {uni:.3f} | |")


if __name__ == "__main__":
    main()
