"""Batches for pretraining from a prepared dataset: memory-mapped reads, MLM masking or causal labels.

The data is one endless stream of epochs, each a permutation of the split; a global micro-batch of n x world_size
sequences is the next stretch of it, dealt round-robin to the ranks. Every random choice for a sequence (which
positions are predicted, [MASK]/random/kept, the random token) is a function of (seed, epoch, index of the
sequence in the split) alone (`sample_random`), so 1, 2 or N ranks, and a resume on another count, see identical
samples, and `state_dict()` is two integers that any world size reads. With `prefetch`, a background
thread builds the next batch (same size as the last) while the model computes; a different size or a restored
state simply discards it. Masking is vectorized over the
batch: a fixed k = round(mask_rate * seq_len) positions per sequence are predicted (static shapes for compiled
models, Cramming's sparse prediction head), never [CLS]/[SEP]/[PAD]; of those, 80% become [MASK], 10% a random
token and 10% stay as they are (BERT's recipe). With `whole_word_mask`, all pieces of a word are chosen
together (the last word chosen may be cut to keep exactly k).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from cramlm.data.sample_random import random_words, sample_keys
from cramlm.data.store import Dataset
from cramlm.data.tokenizer import MASK_ID, SPECIAL_TOKENS, load_tokenizer, word_starts
from cramlm.errors import CramlmError

IGNORE = -100
N_SPECIAL = len(SPECIAL_TOKENS)
_P80, _P90 = np.uint32(0.8 * 2**32), np.uint32(0.9 * 2**32)  # a uniform uint32 below these: 80% and 90%


class BatchLoader:
    """Endless batches of `n` sequences for `rank` of `world_size`, in the dataset's `order`: shuffled per epoch
    by seed, sorted by token frequency (Cramming), or as stored (`none`). Every rank must ask for the same n."""

    def __init__(
        self,
        dataset: Dataset,
        split: str = "train",
        objective: str = "mlm",
        mask_rate: float = 0.25,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        whole_word_mask: bool = False,
        prefetch: bool = False,
    ):
        if objective not in ("mlm", "causal"):
            raise CramlmError(f"unknown objective {objective!r} (choose mlm or causal)")
        if not 0 <= rank < world_size:
            raise CramlmError(f"rank {rank} is outside world size {world_size}")
        if objective == "mlm" and not 0.0 < mask_rate < 1.0:
            raise CramlmError(f"mask_rate must be in (0, 1), got {mask_rate}")
        self.data = dataset.sequences(split)
        self.split, self.objective, self.seed, self.rank, self.world_size = split, objective, seed, rank, world_size
        self.seq_len, self.vocab_size = dataset.seq_len, dataset.vocab_size
        if len(self.data) < world_size:
            raise CramlmError(
                f"the {split} split has {len(self.data)} sequences: too few for {world_size} rank(s)"
            )
        self.order = dataset.manifest.get("order", "shuffle")
        self.root = dataset.root
        self.k = max(1, round(mask_rate * self.seq_len))
        self.word_start = (
            np.array(word_starts(load_tokenizer(dataset.tokenizer_path)), dtype=np.int64) if whole_word_mask else None
        )
        self.epoch = 0
        self.consumed = 0  # sequences of this epoch's order taken by all ranks together
        self._orders: tuple[tuple[int, np.ndarray], ...] = ()  # the last two epochs' orders (replaced whole)
        self._fixed: np.ndarray | None = None  # the order of every epoch when it is not shuffled
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cramlm-prefetch") if prefetch else None
        self._ahead: tuple[tuple, Future] | None = None

    def __len__(self) -> int:
        """Sequences per epoch (all ranks together)."""
        return len(self.data)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The rows of the split in the order an epoch reads them: the same on every rank and world size."""
        if self.order != "shuffle":
            if self._fixed is None:
                self._fixed = self._frequency_order() if self.order == "frequency" else np.arange(len(self.data))
            return self._fixed
        cached = self._orders  # one read: the prefetch thread may replace it meanwhile
        for known, order in cached:
            if known == epoch:
                return order
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
        self._orders = ((epoch, order), *cached[:1])
        return order

    def _frequency_order(self) -> np.ndarray:
        """Cramming's ordering: sequences made of the most frequent tokens first (mean unigram log-probability
        under the train split's token counts, highest first; ties keep file order). The same every epoch."""
        counts = np.load(self.root / "token_counts.npy").astype(np.float64) + 1.0
        logp = np.log(counts / counts.sum()).astype(np.float32)
        step = 1 << 16
        scores = np.concatenate([logp[np.asarray(self.data[i:i + step])].mean(axis=1)
                                 for i in range(0, len(self.data), step)])
        return np.argsort(-scores, kind="stable")

    def _take(self, n: int, epoch: int, consumed: int) -> tuple[np.ndarray, np.ndarray | int, int, int]:
        """This rank's n sequences of the global micro-batch that starts at (epoch, consumed): their rows in the
        split, their epoch (one per row where the batch rolls over), and the position after the global batch."""
        size, end = len(self.data), consumed + n * self.world_size
        if end <= size:  # the usual case: no epoch boundary inside the batch
            rows = self._epoch_order(epoch)[consumed + self.rank:end:self.world_size]
            return rows, epoch, epoch + end // size, end % size
        at = consumed + self.rank + self.world_size * np.arange(n, dtype=np.int64)
        epochs = epoch + at // size
        at %= size
        rows = np.empty(n, dtype=np.int64)
        for e in np.unique(epochs).tolist():
            mine = epochs == e
            rows[mine] = self._epoch_order(e)[at[mine]]
        return rows, epochs, epoch + end // size, end % size

    def _make(self, n: int, epoch: int, consumed: int) -> tuple[dict[str, torch.Tensor], int, int]:
        """A pure function of the position: the batch and the position after it."""
        rows, epochs, epoch, consumed = self._take(n, epoch, consumed)
        ids = np.asarray(self.data[rows], dtype=np.int64)
        if self.objective == "causal":
            tensor = torch.from_numpy(ids)
            return {"input_ids": tensor, "labels": tensor.clone()}, epoch, consumed
        words = random_words(sample_keys(self.seed, epochs, rows), self.seq_len + 2 * self.k)
        masked = mask_from_words(ids, words, self.k, self.vocab_size, self.word_start)
        return {k: torch.from_numpy(v) for k, v in masked.items()}, epoch, consumed

    def next_batch(self, n_sequences: int) -> dict[str, torch.Tensor]:
        if n_sequences < 1:
            raise CramlmError(f"batch size must be at least 1, got {n_sequences}")
        key = (n_sequences, self.epoch, self.consumed)
        future, self._ahead = self._ahead, None
        if future is not None and future[0] == key:
            batch, epoch, consumed = future[1].result()
        else:
            batch, epoch, consumed = self._make(*key)
        self.epoch, self.consumed = epoch, consumed
        if self._pool is not None:  # guess the next call asks for the same size (the trainer's usual case)
            ahead = (n_sequences, self.epoch, self.consumed)
            self._ahead = (ahead, self._pool.submit(self._make, *ahead))
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The global position (the same on every rank): any rank of any world size resumes from it."""
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "sequences": len(self.data),
                "split": self.split}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Also reads the older per-rank form ({cursor, rank, world_size}: `cursor x world_size` consumed)."""
        for key in ("seed", "sequences", "split"):
            mine = len(self.data) if key == "sequences" else getattr(self, key)
            if state.get(key, mine) != mine:
                raise CramlmError(f"loader state is for {key}={state[key]}, this loader has {key}={mine}")
        consumed = state["consumed"] if "consumed" in state else state["cursor"] * state["world_size"]
        if not 0 <= consumed <= len(self.data):
            raise CramlmError(f"loader state position {consumed} is outside the {len(self.data)} sequences")
        self.epoch, self.consumed = int(state["epoch"]), int(consumed)


def mlm_mask(
    ids: np.ndarray, rng: np.random.Generator, k: int, vocab_size: int, word_start: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """MLM-mask a (n, L) batch with draws from a stateful generator (batches that no other process redraws)."""
    n, length = ids.shape
    words = rng.integers(0, 1 << 32, (n, length + 2 * min(k, length)), dtype=np.uint32)
    return mask_from_words(ids, words, k, vocab_size, word_start)


def mask_from_words(
    ids: np.ndarray, words: np.ndarray, k: int, vocab_size: int, word_start: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """MLM-mask a (n, L) batch: k predicted positions per row, 80/10/10 (numpy: several times faster here).

    Row i's choices come from words[i] alone, (L + 2k) uniform uint32: L position scores (31 bits), then k rolls
    for [MASK]/random/keep, then k draws of the random token.
    """
    n, length = ids.shape
    k = min(k, length)
    scores = words[:, :length] >> np.uint32(1)
    if word_start is not None:  # one score per word, shared by its pieces
        word = np.cumsum(word_start[ids], axis=1).clip(1, length) - 1
        scores = np.take_along_axis(scores, word, axis=1)
    scores[ids < N_SPECIAL] = 1 << 31  # above every score: chosen last, only if a row has < k ordinary tokens
    positions = np.sort(np.argpartition(scores, k - 1, axis=1)[:, :k], axis=1)
    targets = np.take_along_axis(ids, positions, axis=1)
    valid = targets >= N_SPECIAL
    labels = np.full_like(ids, IGNORE)
    np.put_along_axis(labels, positions, np.where(valid, targets, IGNORE), axis=1)
    roll = words[:, length:length + k]
    draw = words[:, length + k:length + 2 * k].astype(np.uint64)
    random_ids = N_SPECIAL + (draw * np.uint64(vocab_size - N_SPECIAL) >> np.uint64(32)).astype(np.int64)
    replaced = np.where(roll < _P80, MASK_ID, np.where(roll < _P90, random_ids, targets))
    input_ids = ids.copy()
    np.put_along_axis(input_ids, positions, np.where(valid, replaced, targets), axis=1)
    return {"input_ids": input_ids, "labels": labels, "mask_positions": positions}
