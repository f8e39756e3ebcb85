"""A sequence's masks are a function of (seed, epoch, sequence) alone: the same in one process or in any rank of N,
after a resume on another world size, and across epoch boundaries."""

import json

import numpy as np
import pytest
import torch

from cramlm.data.loader import IGNORE, N_SPECIAL, BatchLoader
from cramlm.data.sample_random import random_words, sample_keys
from cramlm.data.store import Dataset
from cramlm.data.tokenizer import MASK_ID

KEYS = ("input_ids", "labels", "mask_positions")


def interleave(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The global micro-batch from the ranks' shares: rank r holds its positions r, r + N, r + 2N, ..."""
    return {k: torch.stack([p[k] for p in parts], dim=1).flatten(0, 1) for k in parts[0]}


@pytest.mark.parametrize("whole_word", [False, True])
def test_every_rank_draws_the_masks_one_process_would(tiny_dataset, whole_word):
    ds = Dataset(tiny_dataset)
    size = len(ds.sequences("train"))
    single = BatchLoader(ds, seed=5, whole_word_mask=whole_word)
    expected = [single.next_batch(n) for n in (60, 120, 330, 330, 60)]  # the 4th crosses an epoch
    assert single.epoch == 1 and size % 3 and size % 5, "epochs that no rank count divides"
    for world in (2, 3, 5):
        ranks = [BatchLoader(ds, seed=5, rank=r, world_size=world, whole_word_mask=whole_word) for r in range(world)]
        for want in expected:
            n = len(want["input_ids"]) // world
            got = interleave([loader.next_batch(n) for loader in ranks])
            assert all(torch.equal(got[k], want[k]) for k in KEYS), f"world size {world}"
        assert all(r.state_dict() == single.state_dict() for r in ranks)


def test_resume_on_another_world_size_continues_the_same_stream(tiny_dataset):
    ds = Dataset(tiny_dataset)
    two = [BatchLoader(ds, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        for loader in two:
            loader.next_batch(40)
    state = json.loads(json.dumps(two[0].state_dict()))  # as a checkpoint stores it
    one = BatchLoader(ds, seed=1)
    one.load_state_dict(state)
    three = [BatchLoader(ds, seed=1, rank=r, world_size=3) for r in range(3)]
    for loader in three:
        loader.load_state_dict(state)
    for _ in range(4):  # 60 sequences per global micro-batch on each world size; crosses an epoch
        want = one.next_batch(60)
        for ranks, n in ((two, 30), (three, 20)):
            got = interleave([loader.next_batch(n) for loader in ranks])
            assert all(torch.equal(got[k], want[k]) for k in KEYS), f"{len(ranks)} ranks"
    assert one.epoch == 1 and all(r.state_dict() == one.state_dict() for r in two + three)


def test_the_older_per_rank_position_is_read(tiny_dataset):
    ds = Dataset(tiny_dataset)
    size = len(ds.sequences("train"))
    old = {"epoch": 2, "cursor": 10, "batches": 7, "seed": 0, "rank": 1, "world_size": 2, "sequences": size,
           "split": "train"}
    loader = BatchLoader(ds, rank=0, world_size=4)
    loader.load_state_dict(old)
    assert (loader.epoch, loader.consumed) == (2, 20)
    assert loader.state_dict() == {"epoch": 2, "consumed": 20, "seed": 0, "sequences": size, "split": "train"}
    with pytest.raises(Exception, match="outside"):
        loader.load_state_dict({**loader.state_dict(), "consumed": size + 1})


def test_masks_change_with_seed_and_epoch_and_keep_bert_proportions(tiny_dataset):
    ds = Dataset(tiny_dataset)
    train = ds.sequences("train")
    loader = BatchLoader(ds, seed=2)
    k = loader.k
    first = loader.next_batch(len(train))  # exactly one epoch
    second = loader.next_batch(len(train))
    rows0, rows1 = loader._epoch_order(0), loader._epoch_order(1)
    by_row0 = first["mask_positions"][np.argsort(rows0)]
    by_row1 = second["mask_positions"][np.argsort(rows1)]
    assert (by_row0 != by_row1).any(1).float().mean() > 0.9  # a new epoch draws new masks for the same rows
    other = BatchLoader(ds, seed=3).next_batch(len(train))
    assert (other["mask_positions"][np.argsort(BatchLoader(ds, seed=3)._epoch_order(0))] != by_row0).any(1).all()

    original = torch.from_numpy(np.asarray(train[rows0], dtype=np.int64))
    chosen = first["labels"] != IGNORE
    assert torch.equal(first["labels"][chosen], original[chosen]) and (chosen.sum(1) == k).all()
    new = first["input_ids"][chosen]
    masked, kept = (new == MASK_ID).float().mean().item(), (new == original[chosen]).float().mean().item()
    assert 0.77 < masked < 0.83 and 0.09 < kept < 0.13  # 10% kept, plus random draws that hit the same token
    assert new.min() >= N_SPECIAL - 1 and new.max() < ds.vocab_size  # [MASK] (4) or an ordinary token


def test_random_words_are_uniform_and_depend_on_their_key_only():
    keys = sample_keys(7, np.zeros(4000, dtype=np.int64), np.arange(4000))
    assert len(np.unique(keys)) == 4000
    words = random_words(keys, 33)
    assert words.shape == (4000, 33) and words.dtype == np.uint32
    assert np.array_equal(random_words(keys[10:20], 33), words[10:20])  # a row ignores its neighbours
    assert np.array_equal(random_words(keys, 40)[:, :33], words)  # more words extend the row
    bits = np.unpackbits(words.view(np.uint8)).reshape(-1, 32 * 33).mean(0)
    assert np.abs(bits - 0.5).max() < 0.04  # every bit fair
    assert not np.array_equal(sample_keys(8, [0], [0]), sample_keys(7, [0], [0]))
    assert not np.array_equal(sample_keys(7, [1], [0]), sample_keys(7, [0], [0]))
