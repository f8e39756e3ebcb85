"""The dataset dir: packed token sequences in raw shards, a manifest, and the tokenizer that made them.

    DIR/manifest.json      format version, config, sources, counts (see docs/formats.md)
    DIR/tokenizer.json     the HF tokenizer; its sha256 is in the manifest
    DIR/train/00000.bin    row-major (n, seq_len) token ids, uint16 when vocab < 65536 else uint32, little-endian
    DIR/val/00000.bin      the held-out documents, packed the same way

Packing follows Cramming: documents are concatenated, each ended by [SEP], and cut into blocks; every block
starts with [CLS] so that encoders have their first-token slot and decoders a beginning-of-sequence token.
Shards are written under a temporary name and renamed into place, so a shard that exists is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cramlm.data.tokenizer import CLS_ID, SEP_ID, tokenizer_hash
from cramlm.errors import CramlmError

FORMAT = "cramlm-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size < 65536 else np.dtype("<u4")


class Packer:
    """Turn a stream of documents' token ids into (m, seq_len) blocks: [CLS] + seq_len-1 tokens of the stream."""

    def __init__(self, seq_len: int, dtype: np.dtype):
        self.body = seq_len - 1
        self.dtype = dtype
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    def add(self, ids: np.ndarray) -> np.ndarray | None:
        """Append one document (its [SEP] is added here); returns the blocks completed so far, if any."""
        self.pending.append(np.asarray(ids, dtype=self.dtype))
        self.pending.append(np.array([SEP_ID], dtype=self.dtype))
        self.n_pending += len(ids) + 1
        return self._flush() if self.n_pending >= 64 * self.body else None

    def _flush(self) -> np.ndarray | None:
        n_blocks = self.n_pending // self.body
        if not n_blocks:
            return None
        stream = np.concatenate(self.pending)
        cut = n_blocks * self.body
        rest = stream[cut:]
        self.pending, self.n_pending = ([rest] if len(rest) else []), len(rest)
        blocks = np.empty((n_blocks, self.body + 1), dtype=self.dtype)
        blocks[:, 0] = CLS_ID
        blocks[:, 1:] = stream[:cut].reshape(n_blocks, self.body)
        return blocks

    def finish(self) -> tuple[np.ndarray | None, int]:
        """The last full blocks and the number of trailing tokens dropped (less than one block)."""
        blocks = self._flush()
        return blocks, self.n_pending


class ShardWriter:
    """Append blocks to `<dir>/<split>/NNNNN.bin`, at most `shard_rows` rows per shard, each committed atomically."""

    def __init__(self, root: Path, split: str, seq_len: int, dtype: np.dtype, shard_rows: int, first: int = 0):
        self.dir = Path(root) / split
        self.dir.mkdir(parents=True, exist_ok=True)
        self.split, self.seq_len, self.dtype, self.shard_rows = split, seq_len, dtype, max(1, shard_rows)
        self.index = first
        self.rows = 0
        self.file = None
        self.shards: list[dict[str, Any]] = []

    def _path(self) -> Path:
        return self.dir / f"{self.index:05d}.bin"

    def write(self, blocks: np.ndarray | None) -> None:
        while blocks is not None and len(blocks):
            if self.file is None:
                self.file = open(self._path().with_suffix(".bin.tmp"), "wb")
            take = min(len(blocks), self.shard_rows - self.rows)
            self.file.write(np.ascontiguousarray(blocks[:take], dtype=self.dtype).tobytes())
            self.rows += take
            blocks = blocks[take:]
            if self.rows == self.shard_rows:
                self._commit()

    def _commit(self) -> None:
        if self.file is None:
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self._path().with_suffix(".bin.tmp"), self._path())
        self.shards.append({"file": f"{self.split}/{self._path().name}", "sequences": self.rows})
        self.file, self.rows, self.index = None, 0, self.index + 1

    def close(self) -> list[dict[str, Any]]:
        self._commit()
        return self.shards


class ShardedArray:
    """Several memory-mapped (n_i, seq_len) shards read as one (n, seq_len) array (int, slice or index array)."""

    def __init__(self, parts: list[np.ndarray], seq_len: int, dtype: np.dtype):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]), seq_len)
        self.dtype = dtype
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} out of range for {len(self)} sequences")
            shard = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return np.asarray(self.parts[shard][i - self.offsets[shard]])
        rows = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64)
        rows = np.where(rows < 0, rows + len(self), rows)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        for s in np.unique(shard):
            hit = shard == s
            out[hit] = self.parts[s][rows[hit] - self.offsets[s]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    tmp = Path(root) / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, Path(root) / "manifest.json")


def read_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise CramlmError(f"{root} is not a dataset dir (no manifest.json): run `cramlm prepare` first")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CramlmError(f"{path} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        raise CramlmError(f"{path} is not a cramlm dataset manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise CramlmError(
            f"{root} has dataset format version {manifest['format_version']}; this cramlm reads up to {FORMAT_VERSION}"
        )
    return manifest


class Dataset:
    """A prepared dataset dir: manifest, tokenizer and memory-mapped sequences per split."""

    def __init__(self, root: str | Path, check_tokenizer: bool = True):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.seq_len = int(self.manifest["seq_len"])
        self.vocab_size = int(self.manifest["vocab_size"])
        self.dtype = np.dtype(self.manifest["dtype"])
        self.tokenizer_path = self.root / "tokenizer.json"
        if not self.tokenizer_path.is_file():
            raise CramlmError(f"{self.root} has no tokenizer.json")
        if check_tokenizer and tokenizer_hash(self.tokenizer_path) != self.manifest["tokenizer"]["sha256"]:
            raise CramlmError(f"{self.tokenizer_path} is not the tokenizer this dataset was made with (sha256 differs)")
        self._cache: dict[str, np.ndarray | ShardedArray] = {}

    def sequences(self, split: str = "train") -> np.ndarray | ShardedArray:
        """(n, seq_len) token ids, memory-mapped; a split of several shards reads as one ShardedArray."""
        if split not in SPLITS:
            raise CramlmError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
        if split not in self._cache:
            parts = []
            for shard in self.manifest["splits"][split]["shards"]:
                path = self.root / shard["file"]
                if not path.is_file():
                    raise CramlmError(f"{path} is missing: the dataset dir is incomplete")
                expected = shard["sequences"] * self.seq_len * self.dtype.itemsize
                if path.stat().st_size != expected:
                    raise CramlmError(f"{path} has {path.stat().st_size} bytes, expected {expected}: it is damaged")
                parts.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(shard["sequences"], self.seq_len)))
            if len(parts) == 1:
                self._cache[split] = parts[0]
            elif not parts:
                self._cache[split] = np.zeros((0, self.seq_len), dtype=self.dtype)
            else:
                self._cache[split] = ShardedArray(parts, self.seq_len, self.dtype)
        return self._cache[split]

    def __repr__(self) -> str:
        s = self.manifest["splits"]
        return (f"Dataset({self.root}, seq_len={self.seq_len}, vocab_size={self.vocab_size}, "
                f"train={s['train']['sequences']}, val={s['val']['sequences']})")
