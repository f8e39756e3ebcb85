"""Data-stage throughput, side by side in one run (results in BENCHMARKS.md, section `prepare (data)`).

1. WikiText-2 train: end-to-end `prepare` (with and without tokenizer training, 0 and 2 workers) against the
   raw time of HF `tokenizers` `encode_batch` over the same documents with the same tokenizer.
2. Loader: MLM batches/s of 256 x 128 on one core (plain, whole-word, prefetch) and causal.
3. Memory: peak RSS and time of `prepare` (exact dedup off, tokenizer reused) on k concatenated copies of
   WikiText-2 train, each in a fresh process, to show that memory stays flat and time grows linearly.

    .venv/bin/python benchmarks/prepare_throughput.py [--copies 5 20] [--data ../shared/data/wikitext-2/train.txt]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "wikitext-2" / "train.txt"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_prepare(data: Path, tmp: Path) -> None:
    from cramlm.config import DataConfig
    from cramlm.data.prepare import prepare
    from cramlm.data.sources import iter_documents
    from cramlm.data.tokenizer import load_tokenizer

    cfg = DataConfig()  # the defaults: WordPiece 32768, seq 128, all default filters
    t_train, m = timed(lambda: prepare([str(data)], tmp / "a", cfg, progress=False))
    tok_file = str(tmp / "a" / "tokenizer.json")
    reuse = cfg.model_copy(update={"tokenizer_file": tok_file})
    t_reuse, _ = timed(lambda: prepare([str(data)], tmp / "b", reuse, progress=False))
    t_reuse2, _ = timed(lambda: prepare([str(data)], tmp / "c", reuse, workers=2, progress=False))
    same = all((tmp / "b" / s["file"]).read_bytes() == (tmp / "c" / s["file"]).read_bytes()
               for split in ("train", "val") for s in m["splits"][split]["shards"])

    tok = load_tokenizer(tok_file)

    def raw(encode):
        docs = list(iter_documents(str(data)))
        return sum(len(e.ids) for e in encode(docs, add_special_tokens=False))

    t_raw, n_tokens = timed(lambda: raw(tok.encode_batch))
    t_fast, _ = timed(lambda: raw(tok.encode_batch_fast))
    mb = data.stat().st_size / 1e6
    print(f"\n## prepare vs raw encode_batch on {data.name} ({mb:.1f} MB, {n_tokens:,} tokens)")
    print(f"{'what':52s} {'seconds':>8s} {'x raw':>7s} {'MB/s':>7s}")
    for name, t in [
        ("raw encode_batch (read + encode, same tokenizer)", t_raw),
        ("raw encode_batch_fast (no offsets)", t_fast),
        ("prepare, reuse tokenizer, workers=0 (HF threads)", t_reuse),
        ("prepare, reuse tokenizer, workers=2 (processes)", t_reuse2),
        ("prepare, train WordPiece 32768 first, workers=0", t_train),
    ]:
        print(f"{name:52s} {t:8.2f} {t / t_raw:7.2f} {mb / t:7.2f}")
    print(f"shards byte-identical for workers 0 and 2: {same}; kept {m['documents']:,} documents, "
          f"{m['sequences']:,} sequences, dropped {m['dropped']}")


def bench_loader(tmp: Path) -> None:
    import torch

    from cramlm.data.loader import BatchLoader
    from cramlm.data.store import Dataset

    torch.set_num_threads(1)
    ds = Dataset(tmp / "a")
    print("\n## loader, batch 256 x seq 128, one core")
    print(f"{'mode':28s} {'batches/s':>10s} {'ms/batch':>9s}")
    for name, kw in [("mlm 25%", {}), ("mlm 25% whole-word", {"whole_word_mask": True}),
                     ("mlm 25% + prefetch thread", {"prefetch": True}), ("causal", {"objective": "causal"})]:
        loader = BatchLoader(ds, **kw)
        loader.next_batch(256)
        n = 400
        t, _ = timed(lambda: [loader.next_batch(256) for _ in range(n)])
        print(f"{name:28s} {n / t:10.0f} {1e3 * t / n:9.2f}")


CHILD = """
import json, re, sys, time
from pathlib import Path
from cramlm.config import DataConfig
from cramlm.data.prepare import prepare
cfg = DataConfig(dedup=False, tokenizer_file=sys.argv[3])
start = time.perf_counter()
m = prepare([sys.argv[1]], sys.argv[2], cfg, progress=False)
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text())  # this process's peak, not its parent's
print(json.dumps({"seconds": time.perf_counter() - start, "tokens": m["tokens"], "rss_mb": int(hwm.group(1)) / 1024}))
"""


def bench_memory(data: Path, tmp: Path, copies: list[int]) -> None:
    text = data.read_bytes()
    print(f"\n## memory: peak RSS of prepare on k copies of {data.name} (exact dedup off, tokenizer reused)")
    print(f"{'copies':>6s} {'MB in':>7s} {'seconds':>8s} {'s per MB':>9s} {'peak RSS MB':>12s}")
    for k in copies:
        src = tmp / f"x{k}.txt"
        with open(src, "wb") as f:
            for _ in range(k):
                f.write(text)
        cmd = [sys.executable, "-c", CHILD, str(src), str(tmp / f"m{k}"), str(tmp / "a" / "tokenizer.json")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        mb = src.stat().st_size / 1e6
        print(f"{k:6d} {mb:7.1f} {r['seconds']:8.1f} {r['seconds'] / mb:9.3f} {r['rss_mb']:12.0f}")
        src.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--copies", type=int, nargs="*", default=[5, 20])
    args = ap.parse_args()
    if not args.data.is_file():
        sys.exit(f"benchmark data {args.data} not found (pass --data)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bench_prepare(args.data, tmp)
        bench_loader(tmp)
        if args.copies:
            bench_memory(args.data, tmp, args.copies)


if __name__ == "__main__":
    main()
