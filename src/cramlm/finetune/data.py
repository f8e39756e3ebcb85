"""Fine-tuning data: prompt/response pairs encoded, split, padded, and served like pretraining batches.

`PairData` looks to the trainer like a prepared dataset (`seq_len`, `vocab_size`, `tokenizer_path`,
`sequences(split)`), and `PairLoader` takes its order from the pretraining `BatchLoader` (same seeded shuffle,
rank sharding, exact resume state) with one change: labels are -100 on the prompt and the padding, so only
response tokens (and the `[SEP]` that ends them) carry loss. Every row is padded at the end to the longest example:
causal attention never looks ahead, so the padding changes no logit that is scored, and all batches share one
static shape.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cramlm.data.loader import IGNORE, BatchLoader
from cramlm.data.tokenizer import PAD_ID, load_tokenizer
from cramlm.errors import CramlmError
from cramlm.finetune.pairs import pair_ids, read_pairs

SPLIT_SEED = 0  # the held-out examples depend on the file alone, not on the training seed


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class PairData:
    """The pairs of a JSONL file, encoded with a run's tokenizer in at most `max_len` tokens each, split into
    `train` and `val` (a `val_fraction` of the examples, at least one, chosen by a fixed seed)."""

    def __init__(self, path: str | Path, tokenizer_path: str | Path, vocab_size: int, max_len: int,
                 prompt_field: str = "prompt", response_field: str = "response", val_fraction: float = 0.05):
        if not 0.0 < val_fraction < 1.0:
            raise CramlmError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        self.root = Path(path)
        self.tokenizer_path, self.vocab_size = Path(tokenizer_path), vocab_size
        self.manifest = {"order": "shuffle"}  # what `BatchLoader` reads of a dataset
        pairs = read_pairs(path, prompt_field, response_field)
        if len(pairs) < 2:
            raise CramlmError(f"{path} holds {len(pairs)} example: fine-tuning needs at least 2 (one is held out "
                              f"for the validation loss)")
        tokenizer = load_tokenizer(tokenizer_path)
        encoded, self.dropped, self.truncated = [], 0, 0
        for prompt, response in pairs:
            got = pair_ids(tokenizer, prompt, response, max_len)
            if got is None:
                self.dropped += 1
                continue
            ids, prompt_len = got
            self.truncated += prompt_len - 2 < len(tokenizer.encode(prompt, add_special_tokens=False).ids)
            encoded.append(got)
        if len(encoded) < 2:
            raise CramlmError(f"{len(encoded)} of the {len(pairs)} examples of {path} fit in the model's "
                              f"{max_len} tokens with their whole response: fine-tuning needs at least 2")
        n_val = min(len(encoded) - 1, max(1, round(val_fraction * len(encoded))))
        order = np.random.default_rng(SPLIT_SEED).permutation(len(encoded))
        self.seq_len = max(len(ids) for ids, _ in encoded)
        self._splits = {"val": self._pad([encoded[i] for i in sorted(order[:n_val])]),
                        "train": self._pad([encoded[i] for i in sorted(order[n_val:])])}
        self.examples = len(pairs)

    def _pad(self, examples: list[tuple[list[int], int]]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(examples), self.seq_len), PAD_ID, dtype=np.int64)
        labels = np.full((len(examples), self.seq_len), IGNORE, dtype=np.int64)
        for row, (seq, prompt_len) in enumerate(examples):
            ids[row, :len(seq)] = seq
            labels[row, prompt_len:len(seq)] = seq[prompt_len:]
        return ids, labels

    def sequences(self, split: str) -> np.ndarray:
        return self._splits[split][0]

    def batch(self, split: str, rows: np.ndarray) -> dict[str, torch.Tensor]:
        ids, labels = self._splits[split]
        return {"input_ids": torch.from_numpy(ids[rows]), "labels": torch.from_numpy(labels[rows])}

    def summary(self) -> dict[str, Any]:
        return {"examples": self.examples, "train": len(self.sequences("train")), "val": len(self.sequences("val")),
                "dropped_too_long": self.dropped, "prompts_truncated": int(self.truncated),
                "seq_len": self.seq_len}


class _RowIndex:
    """A dataset whose sequences are the row numbers of the training pairs: `BatchLoader` deals them out."""

    def __init__(self, data: PairData):
        self.data, self.root, self.manifest = data, data.root, data.manifest
        self.seq_len, self.vocab_size, self.tokenizer_path = 1, data.vocab_size, data.tokenizer_path

    def sequences(self, split: str) -> np.ndarray:
        return np.arange(len(self.data.sequences(split)), dtype=np.int64)[:, None]


class PairLoader:
    """Training batches of pairs in `BatchLoader`'s order, rank sharding and resumable position (it deals the
    row numbers), with response-only labels."""

    def __init__(self, data: PairData, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.data = data
        self.rows = BatchLoader(_RowIndex(data), "train", "causal", seed=seed, rank=rank, world_size=world_size)

    def next_batch(self, n_sequences: int) -> dict[str, torch.Tensor]:
        rows = self.rows.next_batch(n_sequences)["input_ids"][:, 0].numpy()
        return self.data.batch("train", rows)

    def state_dict(self) -> dict[str, Any]:
        return self.rows.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows.load_state_dict(state)

    @property
    def epoch(self) -> int:
        return self.rows.epoch


@torch.no_grad()
def response_loss(model: nn.Module, data: PairData, batch_size: int, max_examples: int | None = None,
                  dtype: torch.dtype | None = None) -> float:
    """Mean cross-entropy (nats) per response token over the held-out pairs (the first `max_examples`)."""
    device = next(model.parameters()).device
    n = len(data.sequences("val"))
    n = n if max_examples is None else min(n, max_examples)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, n, batch_size):
            rows = np.arange(start, min(n, start + batch_size))
            batch = {k: v.to(device) for k, v in data.batch("val", rows).items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = model(**batch)
            loss = out.metrics.get("lm_loss", out.loss)  # without a mixture-of-experts' balancing loss
            scored = int((batch["labels"][:, 1:] != IGNORE).sum())
            total += float(loss.float()) * scored
            count += scored
    finally:
        model.train(was_training)
    return total / count
