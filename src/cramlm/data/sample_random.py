"""Random bits that are a pure function of (seed, epoch, sample), whoever draws them.

A sample's MLM masks must not depend on which process reads it or on how many batches came before it, so that 1,
2 or N data-parallel processes, and a resume on another count, train on identical batches. A stateful generator
cannot give that; a counter-based one can: word j of a sample with key K is splitmix64's finalizer of
K + (j + 1) x golden (Steele, Lea and Flood, 2014), and K itself is the same finalizer chained over seed, epoch and
sample index. Vectorised over a batch of keys in numpy, it draws as fast as numpy's own PCG64 does.
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1, _MUL2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_MASK64 = (1 << 64) - 1


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function, in place on a uint64 array (wrapping arithmetic): a bijection whose every
    output bit depends on every input bit."""
    t = z >> _S30
    z ^= t
    z *= _MUL1
    np.right_shift(z, _S27, out=t)
    z ^= t
    z *= _MUL2
    np.right_shift(z, _S31, out=t)
    z ^= t
    return z


def sample_keys(seed: int, epochs: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """One uint64 key per sample, from the run's seed, each sample's epoch and its index in the split."""
    base = mix64(np.array([seed & _MASK64], dtype=np.uint64) + GOLDEN)
    with np.errstate(over="ignore"):
        per_epoch = mix64(base + (np.asarray(epochs, dtype=np.uint64) + np.uint64(1)) * GOLDEN)
        return mix64(per_epoch + (np.asarray(samples, dtype=np.uint64) + np.uint64(1)) * GOLDEN)


def random_words(keys: np.ndarray, count: int) -> np.ndarray:
    """(len(keys), count) uniform uint32 words: row i depends on keys[i] alone (the low then the high half of
    each 64-bit draw, the same on any byte order)."""
    pairs = (count + 1) // 2
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64)[:, None] + GOLDEN * np.arange(1, pairs + 1, dtype=np.uint64)
    return mix64(z).astype("<u8", copy=False).view("<u4")[:, :count]
