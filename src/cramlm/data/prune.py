"""Data pruning by example difficulty (Sorscher et al. 2022, "Beyond neural scaling laws").

The clustering scorer embeds documents without any pretrained model: hashed word 1-2-gram counts -> TF-IDF ->
truncated SVD -> unit vectors, clusters them with k-means, and scores each document by its distance to the
nearest centroid (far = atypical = hard). It is fitted once on a sample; the keep threshold is the sample's score
quantile, so the stream is then pruned document by document with bounded memory. Keep the hard ones when data
is abundant (the budget sees each token about once), the easy ones when it is scarce.

The proxy-loss scorer trains a tiny crammed encoder (`cramlm.models`, fresh weights: no pretrained model) for a
few hundred steps on the sample and scores each document by its masked-LM loss on the document's first
`seq_len` tokens (masking fixed by a seed): high loss = hard.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager

import numpy as np

from cramlm.config import PruneConfig
from cramlm.errors import CramlmError

N_FEATURES = 1 << 16
DIMS = 32
MIN_SAMPLE = 20


class Pruner(ABC):
    """Fit on a sample (scores -> keep threshold at the sample's quantile), then prune chunks of the stream."""

    def __init__(self, cfg: PruneConfig):
        self.cfg = cfg
        self.dropped = 0
        self.threshold = 0.0

    @abstractmethod
    def scores(self, texts: list[str]) -> np.ndarray:
        """Difficulty per document: higher is harder."""

    def _set_threshold(self, scores: np.ndarray) -> None:
        self.threshold = float(np.quantile(scores, 1.0 - self.cfg.keep if self.cfg.keep_hard else self.cfg.keep))

    def keep(self, texts: list[str]) -> list[str]:
        """The documents of a chunk that survive pruning (counted in `dropped`)."""
        if not texts:
            return texts
        s = self.scores(texts)
        mask = s >= self.threshold if self.cfg.keep_hard else s <= self.threshold
        self.dropped += int((~mask).sum())
        return [t for t, m in zip(texts, mask) if m]


def make_pruner(cfg: PruneConfig, tokenizer_path: str, seq_len: int) -> Pruner:
    if cfg.method == "cluster":
        return ClusterPruner(cfg)
    if cfg.method == "proxy":
        return ProxyPruner(cfg, tokenizer_path, min(seq_len, 128))
    raise CramlmError(f"unknown prune method {cfg.method!r} (choose cluster, proxy or none)")


class ClusterPruner(Pruner):

    def _embed(self, texts: list[str], fit: bool = False) -> np.ndarray:
        from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
        from sklearn.decomposition import TruncatedSVD
        from sklearn.preprocessing import normalize

        if fit:
            self.vec = HashingVectorizer(ngram_range=(1, 2), n_features=N_FEATURES, alternate_sign=False, norm=None)
            counts = self.vec.transform(texts)
            self.tfidf = TfidfTransformer(sublinear_tf=True).fit(counts)
            weighted = self.tfidf.transform(counts)
            dims = max(2, min(DIMS, weighted.shape[0] - 1, weighted.shape[1] - 1))
            self.svd = TruncatedSVD(dims, algorithm="arpack", random_state=self.cfg.seed).fit(weighted)
        else:
            weighted = self.tfidf.transform(self.vec.transform(texts))
        return normalize(self.svd.transform(weighted))

    def fit(self, sample: list[str]) -> ClusterPruner:
        """Fit embedding, clusters and keep threshold on a sample of the (already filtered) corpus."""
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        if len(sample) < MIN_SAMPLE:
            raise CramlmError(f"pruning needs at least {MIN_SAMPLE} sample documents, got {len(sample)}")
        with threadpool_limits(1):  # small dense algebra: BLAS threads only oversubscribe the cores
            z = self._embed(sample, fit=True)
            k = min(self.cfg.n_clusters, len(sample) // 2)
            self.kmeans = KMeans(n_clusters=k, n_init=3, random_state=self.cfg.seed).fit(z)
        self._set_threshold(self._distance(z))
        return self

    def _distance(self, z: np.ndarray) -> np.ndarray:
        return self.kmeans.transform(z).min(axis=1)

    def scores(self, texts: list[str]) -> np.ndarray:
        """Difficulty of each document: distance of its embedding to the nearest centroid."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return self._distance(self._embed(texts))

    def describe(self) -> dict:
        return {"method": "cluster", "keep": self.cfg.keep, "keep_hard": self.cfg.keep_hard,
                "clusters": int(self.kmeans.n_clusters), "threshold": self.threshold}


@contextmanager
def _one_thread():
    """A model this small runs fastest on one thread; more only spin against the tokenizer and each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ProxyPruner(Pruner):
    STEPS, BATCH = 150, 32

    def __init__(self, cfg: PruneConfig, tokenizer_path: str, seq_len: int):
        super().__init__(cfg)
        from cramlm.data.tokenizer import load_tokenizer

        self.tok = load_tokenizer(tokenizer_path)
        self.seq_len = seq_len

    def _rows(self, texts: list[str]) -> np.ndarray:
        """[CLS] + each document's first seq_len-1 tokens, [PAD]-filled: one row per document."""
        from cramlm.data.tokenizer import CLS_ID, PAD_ID

        rows = np.full((len(texts), self.seq_len), PAD_ID, dtype=np.int64)
        rows[:, 0] = CLS_ID
        for r, enc in enumerate(self.tok.encode_batch_fast(texts, add_special_tokens=False)):
            ids = enc.ids[: self.seq_len - 1]
            rows[r, 1:1 + len(ids)] = ids
        return rows

    def _masked(self, rows: np.ndarray, seed: int):
        import torch

        from cramlm.data.loader import mlm_mask

        k = max(1, round(0.15 * self.seq_len))
        batch = mlm_mask(rows, np.random.default_rng([self.cfg.seed, seed]), k, self.tok.get_vocab_size())
        return {key: torch.from_numpy(v) for key, v in batch.items()}, torch.from_numpy(rows != 0)

    def fit(self, sample: list[str]) -> ProxyPruner:
        if len(sample) < MIN_SAMPLE:
            raise CramlmError(f"pruning needs at least {MIN_SAMPLE} sample documents, got {len(sample)}")
        with _one_thread():
            return self._fit(sample)

    def _fit(self, sample: list[str]) -> ProxyPruner:
        import torch

        from cramlm.config import ModelConfig
        from cramlm.models.registry import build_model

        torch.manual_seed(self.cfg.seed)
        mcfg = ModelConfig(n_layers=2, d_model=128, n_heads=2, d_ff=256, vocab_size=self.tok.get_vocab_size(),
                           max_seq_len=self.seq_len, positions="learned")
        self.model = build_model(mcfg)
        opt = torch.optim.AdamW(self.model.parameters(), lr=2e-3, weight_decay=0.01)
        rows = self._rows(sample)
        pick = np.random.default_rng(self.cfg.seed)
        self.model.train()
        for step in range(self.STEPS):
            batch, attn = self._masked(rows[pick.integers(0, len(rows), self.BATCH)], step)
            loss = self.model(batch["input_ids"], attn, batch["labels"], batch["mask_positions"]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.model.eval()
        self._set_threshold(self.scores(sample))
        return self

    def scores(self, texts: list[str]) -> np.ndarray:
        """Each document's mean masked-LM loss under the proxy model (masking fixed per call position)."""
        import torch
        import torch.nn.functional as F

        rows = self._rows(texts)
        batch, attn = self._masked(rows, self.STEPS)  # a seed no training step used
        with torch.no_grad(), _one_thread():
            out = self.model(batch["input_ids"], attn, None, batch["mask_positions"])
        labels = batch["labels"].gather(1, batch["mask_positions"])
        logits = out.logits
        if logits.shape[1] != labels.shape[1]:  # a dense head: keep the masked positions
            logits = logits.gather(1, batch["mask_positions"][..., None].expand(-1, -1, logits.shape[-1]))
        loss = F.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=-100, reduction="none")
        valid = (labels != -100).float()
        return ((loss * valid).sum(1) / valid.sum(1).clamp(min=1)).numpy()

    def describe(self) -> dict:
        return {"method": "proxy", "keep": self.cfg.keep, "keep_hard": self.cfg.keep_hard, "threshold": self.threshold}
