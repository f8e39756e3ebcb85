"""Batches for pretraining from a prepared dataset: memory-mapped reads, MLM masking or causal labels.

Everything a batch depends on is (seed, rank, epoch, position, batch count), so `state_dict()` is a few integers
and a resumed loader yields exactly the batches the uninterrupted one would have. With `prefetch`, a background
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

from cramlm.data.store import Dataset
from cramlm.data.tokenizer import MASK_ID, SPECIAL_TOKENS, load_tokenizer, word_starts
from cramlm.errors import CramlmError

IGNORE = -100
N_SPECIAL = len(SPECIAL_TOKENS)


class BatchLoader:
    """Endless batches of `n` sequences, sharded by rank, in the dataset's `order`: shuffled per epoch by seed,
    sorted by token frequency (Cramming), or as stored (`none`)."""

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
        self.per_rank = len(self.data) // world_size
        if self.per_rank == 0:
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
        self.cursor = 0  # position inside this rank's order for the current epoch
        self.batches = 0
        self._order: tuple[int, np.ndarray] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cramlm-prefetch") if prefetch else None
        self._ahead: tuple[tuple, Future] | None = None

    def __len__(self) -> int:
        """Sequences per epoch seen by this rank."""
        return self.per_rank

    def _rank_order(self, epoch: int) -> np.ndarray:
        """This rank's rows for an epoch: every rank cuts the same permutation, so ranks never overlap."""
        cached = self._order
        if cached is None or cached[0] != epoch:
            n = self.per_rank * self.world_size
            if self.order == "shuffle":
                order = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
            elif self.order == "frequency":
                order = self._frequency_order()
            else:
                order = np.arange(len(self.data))
            cached = self._order = (epoch, order[:n][self.rank::self.world_size])
        return cached[1]

    def _frequency_order(self) -> np.ndarray:
        """Cramming's ordering: sequences made of the most frequent tokens first (mean unigram log-probability
        under the train split's token counts, highest first; ties keep file order). The same every epoch."""
        counts = np.load(self.root / "token_counts.npy").astype(np.float64) + 1.0
        logp = np.log(counts / counts.sum()).astype(np.float32)
        step = 1 << 16
        scores = np.concatenate([logp[np.asarray(self.data[i:i + step])].mean(axis=1)
                                 for i in range(0, len(self.data), step)])
        return np.argsort(-scores, kind="stable")

    def _take(self, n: int, epoch: int, cursor: int) -> tuple[np.ndarray, int, int]:
        """The n row indices of this rank from (epoch, cursor) on, rolling over epochs; and the position after."""
        parts = []
        while n:
            order = self._rank_order(epoch)
            got = order[cursor:cursor + n]
            parts.append(got)
            n -= len(got)
            cursor += len(got)
            if cursor == len(order):
                epoch, cursor = epoch + 1, 0
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)), epoch, cursor

    def _make(self, n: int, epoch: int, cursor: int, batches: int) -> tuple[dict[str, torch.Tensor], int, int]:
        """A pure function of the position: the batch and the position after it."""
        rows, epoch, cursor = self._take(n, epoch, cursor)
        ids = np.asarray(self.data[rows], dtype=np.int64)
        if self.objective == "causal":
            tensor = torch.from_numpy(ids)
            return {"input_ids": tensor, "labels": tensor.clone()}, epoch, cursor
        rng = np.random.default_rng([self.seed, self.rank, batches])
        return {k: torch.from_numpy(v) for k, v in self.mask(ids, rng).items()}, epoch, cursor

    def next_batch(self, n_sequences: int) -> dict[str, torch.Tensor]:
        if n_sequences < 1:
            raise CramlmError(f"batch size must be at least 1, got {n_sequences}")
        key = (n_sequences, self.epoch, self.cursor, self.batches)
        future, self._ahead = self._ahead, None
        if future is not None and future[0] == key:
            batch, epoch, cursor = future[1].result()
        else:
            batch, epoch, cursor = self._make(*key)
        self.epoch, self.cursor, self.batches = epoch, cursor, self.batches + 1
        if self._pool is not None:  # guess the next call asks for the same size (the trainer's usual case)
            ahead = (n_sequences, self.epoch, self.cursor, self.batches)
            self._ahead = (ahead, self._pool.submit(self._make, *ahead))
        return batch

    def mask(self, ids: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return mlm_mask(ids, rng, self.k, self.vocab_size, self.word_start)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "batches": self.batches, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size, "sequences": len(self.data), "split": self.split}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "rank", "world_size", "sequences", "split"):
            mine = len(self.data) if key == "sequences" else getattr(self, key)
            if state.get(key, mine) != mine:
                raise CramlmError(f"loader state is for {key}={state[key]}, this loader has {key}={mine}")
        if not 0 <= state["cursor"] <= self.per_rank:
            raise CramlmError(f"loader state cursor {state['cursor']} is outside this rank's {self.per_rank}")
        self.epoch, self.cursor, self.batches = int(state["epoch"]), int(state["cursor"]), int(state["batches"])


def mlm_mask(
    ids: np.ndarray, rng: np.random.Generator, k: int, vocab_size: int, word_start: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """MLM-mask a (n, L) batch: k predicted positions per row, 80/10/10 (numpy: several times faster here)."""
    n, length = ids.shape
    k = min(k, length)
    scores = rng.random((n, length), dtype=np.float32)
    if word_start is not None:  # one score per word, shared by its pieces
        word = np.cumsum(word_start[ids], axis=1).clip(1, length) - 1
        scores = np.take_along_axis(scores, word, axis=1)
    scores[ids < N_SPECIAL] = 2.0  # chosen last, only if a row has fewer than k ordinary tokens
    positions = np.sort(np.argpartition(scores, k - 1, axis=1)[:, :k], axis=1)
    targets = np.take_along_axis(ids, positions, axis=1)
    valid = targets >= N_SPECIAL
    labels = np.full_like(ids, IGNORE)
    np.put_along_axis(labels, positions, np.where(valid, targets, IGNORE), axis=1)
    roll = rng.random((n, k), dtype=np.float32)
    random_ids = rng.integers(N_SPECIAL, vocab_size, (n, k))
    replaced = np.where(roll < 0.8, MASK_ID, np.where(roll < 0.9, random_ids, targets))
    input_ids = ids.copy()
    np.put_along_axis(input_ids, positions, np.where(valid, replaced, targets), axis=1)
    return {"input_ids": input_ids, "labels": labels, "mask_positions": positions}
