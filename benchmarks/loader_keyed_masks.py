"""Loader throughput of this tree against a git revision, side by side in one run (BENCHMARKS.md, `loader: masks
keyed by sample`).

The masks of a sequence are a counter-based function of (seed, epoch, sequence index) since the loader stopped
drawing them from a per-rank generator; this measures what that costs. Both trees read the same prepared dataset
(WikiText-2 train, default data config: WordPiece 32768, seq 128), batches of 256 on one thread; the two trees run
in alternating child processes, `--rounds` times each, and the best round counts (the box is shared).

    .venv/bin/python benchmarks/loader_keyed_masks.py [--baseline 5a400c1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "wikitext-2" / "train.txt"
MODES = {"mlm 25%": {}, "mlm 25% whole-word": {"whole_word_mask": True},
         "mlm 25%, rank 0 of 2 (128)": {"world_size": 2}, "causal": {"objective": "causal"}}

CHILD = """
import json, sys, time
import torch
from cramlm.data.loader import BatchLoader
from cramlm.data.store import Dataset
torch.set_num_threads(1)
ds, modes, n = Dataset(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
out = {}
for name, kw in modes.items():
    size = 256 // kw.get("world_size", 1)
    loader = BatchLoader(ds, **kw)
    loader.next_batch(size)
    start = time.perf_counter()
    for _ in range(n):
        loader.next_batch(size)
    out[name] = n / (time.perf_counter() - start)
print(json.dumps(out))
"""


def source_tree(revision: str, into: Path) -> Path:
    """`src/` of a git revision, unpacked into `into` (nothing in the working tree changes)."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(blob.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def batches_per_s(src: Path, data: Path, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(data), json.dumps(MODES), str(n)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--baseline", default="5a400c1", help="git revision to compare with (default: the last "
                                                           "loader with per-rank generators)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=300)
    args = ap.parse_args()
    if not args.data.is_file():
        sys.exit(f"benchmark data {args.data} not found (pass --data)")
    from cramlm.config import DataConfig
    from cramlm.data.prepare import prepare

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        prepare([str(args.data)], tmp / "ds", DataConfig(), progress=False)
        trees = {args.baseline: source_tree(args.baseline, tmp / "base"), "this tree": ROOT / "src"}
        best: dict[str, dict[str, float]] = {name: {} for name in trees}
        for _ in range(args.rounds):
            for name, src in trees.items():
                for mode, rate in batches_per_s(src, tmp / "ds", args.batches).items():
                    best[name][mode] = max(best[name].get(mode, 0.0), rate)
    base, new = best[args.baseline], best["this tree"]
    print(f"\n## loader batches/s, batch 256 x seq 128, one thread, best of {args.rounds}")
    print(f"{'mode':30s} {args.baseline:>12s} {'this tree':>12s} {'change':>8s}")
    for mode in MODES:
        print(f"{mode:30s} {base[mode]:12.0f} {new[mode]:12.0f} {100 * (new[mode] / base[mode] - 1):+7.1f}%")


if __name__ == "__main__":
    main()
