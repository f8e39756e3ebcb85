"""A dataset dir's manifest as tables: counts per split, what was dropped or skipped, lengths, vocab coverage."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from rich.table import Table

from cramlm.data.store import read_manifest


def stats_tables(root: str | Path) -> list[Table]:
    m = read_manifest(Path(root))
    counts = Table(title=f"{root}: seq_len {m['seq_len']}, vocab {m['vocab_size']}, {m['tokenizer']['kind']}")
    for col in ("split", "documents", "tokens", "sequences", "shards"):
        counts.add_column(col, justify="right" if col != "split" else "left")
    for split, s in m["splits"].items():
        counts.add_row(split, f"{s['documents']:,}", f"{s['tokens']:,}", f"{s['sequences']:,}", str(len(s["shards"])))
    counts.add_row("total", f"{m['documents']:,}", f"{m['tokens']:,}", f"{m['sequences']:,}", "")
    modes = Counter(f["documents"] for s in m.get("sources", []) for f in s.get("files", []) if "documents" in f)
    if modes:  # how the input became documents: the first thing to check when the counts look wrong
        counts.caption = "documents: " + ", ".join(f"{k} ({n:,} file{'s' * (n > 1)})" for k, n in sorted(modes.items()))

    dropped = Table(title="dropped (filters) and skipped (unreadable input)")
    dropped.add_column("reason")
    dropped.add_column("count", justify="right")
    for kind in ("dropped", "skipped"):
        for reason, n in sorted(m.get(kind, {}).items()):
            dropped.add_row(f"{kind}: {reason}", f"{n:,}")
    if m.get("split_long"):
        dropped.add_row("split: over data.max_chars (kept, in pieces)", f"{m['split_long']:,}")

    lengths = Table(title="document length (tokens)")
    lengths.add_column("tokens")
    lengths.add_column("documents", justify="right")
    lengths.add_column("")
    hist = {int(k): v for k, v in m.get("length_histogram_log2", {}).items()}
    top = max(hist.values(), default=1)
    for b in sorted(hist):
        lengths.add_row(f"{2 ** b}-{2 ** (b + 1) - 1}", f"{hist[b]:,}", "#" * max(1, round(30 * hist[b] / top)))

    tables = [counts, dropped, lengths]
    counts_path = Path(root) / "token_counts.npy"
    if counts_path.is_file():
        tc = np.load(counts_path)
        used = int((tc > 0).sum())
        cover = Table(title="vocabulary coverage (train split)")
        cover.add_column("measure")
        cover.add_column("value", justify="right")
        cover.add_row("token types used", f"{used:,} of {len(tc):,} ({used / len(tc):.1%})")
        top_share = np.sort(tc)[::-1][:100].sum() / max(1, tc.sum())
        cover.add_row("share of the 100 most frequent", f"{top_share:.1%}")
        cover.add_row("[UNK] share", f"{tc[1] / max(1, tc.sum()):.3%}")
        tables.append(cover)
    return tables
