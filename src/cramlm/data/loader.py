"""Batches for pretraining from a prepared dataset: memory-mapped reads, MLM masking or causal labels.

Everything a batch depends on is (seed, rank, epoch, position), so `state_dict()` is three integers and a
resumed loader yields exactly the batches the uninterrupted one would have. Masking is vectorized over the
batch: a fixed k = round(mask_rate * seq_len) positions per sequence are predicted (static shapes for compiled
models, Cramming's sparse prediction head), never [CLS]/[SEP]/[PAD]; of those, 80% become [MASK], 10% a random
token and 10% stay as they are (BERT's recipe). With `whole_word_mask`, all pieces of a word are chosen
together (the last word chosen may be cut to keep exactly k).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cramlm.data.store import Dataset
from cramlm.data.tokenizer import MASK_ID, SPECIAL_TOKENS, load_tokenizer, word_starts
from cramlm.errors import CramlmError

IGNORE = -100
N_SPECIAL = len(SPECIAL_TOKENS)


class BatchLoader:
    """Endless batches of `n` sequences: shuffled per epoch (unless the dataset has a fixed order), sharded by rank."""

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
        self.shuffle = dataset.manifest.get("order", "shuffle") == "shuffle"
        self.k = max(1, round(mask_rate * self.seq_len))
        self.word_start = (
            torch.tensor(word_starts(load_tokenizer(dataset.tokenizer_path)), dtype=torch.bool)
            if whole_word_mask else None
        )
        self.epoch = 0
        self.cursor = 0  # position inside this rank's order for the current epoch
        self.batches = 0
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        """Sequences per epoch seen by this rank."""
        return self.per_rank

    def _rank_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            n = self.per_rank * self.world_size
            order = (np.random.default_rng([self.seed, self.epoch]).permutation(len(self.data))[:n]
                     if self.shuffle else np.arange(n))
            self._order = order[self.rank::self.world_size]
            self._order_epoch = self.epoch
        return self._order

    def _take(self, n: int) -> np.ndarray:
        """The next n row indices of this rank, rolling over into the next epoch."""
        parts = []
        while n:
            order = self._rank_order()
            got = order[self.cursor:self.cursor + n]
            parts.append(got)
            n -= len(got)
            self.cursor += len(got)
            if self.cursor == len(order):
                self.epoch, self.cursor = self.epoch + 1, 0
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def next_batch(self, n_sequences: int) -> dict[str, torch.Tensor]:
        if n_sequences < 1:
            raise CramlmError(f"batch size must be at least 1, got {n_sequences}")
        rows = self._take(n_sequences)
        ids = torch.from_numpy(np.asarray(self.data[rows], dtype=np.int64))
        gen = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, self.rank, self.batches]).generate_state(1)[0])
        )
        self.batches += 1
        if self.objective == "causal":
            return {"input_ids": ids, "labels": ids.clone()}
        return self.mask(ids, gen)

    def mask(self, ids: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """MLM-mask a (n, L) batch: k predicted positions per row, 80/10/10."""
        n, length = ids.shape
        k = min(self.k, length)
        scores = torch.rand(n, length, generator=gen)
        if self.word_start is not None:  # one score per word, shared by its pieces
            word = torch.cumsum(self.word_start[ids].to(torch.int64), dim=1).clamp_(1, length) - 1
            scores = scores.gather(1, word)
        special = ids < N_SPECIAL
        scores.masked_fill_(special, -1.0)
        positions = scores.topk(k, dim=1).indices.sort(dim=1).values
        targets = ids.gather(1, positions)
        valid = targets >= N_SPECIAL  # false only when a row has fewer than k ordinary tokens
        labels = torch.full_like(ids, IGNORE)
        labels.scatter_(1, positions, torch.where(valid, targets, IGNORE))
        roll = torch.rand(n, k, generator=gen)
        random_ids = torch.randint(N_SPECIAL, self.vocab_size, (n, k), generator=gen)
        replaced = torch.where(roll < 0.8, MASK_ID, torch.where(roll < 0.9, random_ids, targets))
        input_ids = ids.scatter(1, positions, torch.where(valid, replaced, targets))
        return {"input_ids": input_ids, "labels": labels, "mask_positions": positions}

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
