"""Data pruning by example difficulty (Sorscher et al. 2022, "Beyond neural scaling laws").

The clustering scorer embeds documents without any pretrained model: hashed word 1-2-gram counts -> TF-IDF ->
truncated SVD -> unit vectors, clusters them with k-means, and scores each document by its distance to the
nearest centroid (far = atypical = hard). It is fitted once on a sample; the keep threshold is the sample's score
quantile, so the stream is then pruned document by document with bounded memory. Keep the hard ones when data
is abundant (the budget sees each token about once), the easy ones when it is scarce.

The proxy-loss scorer of the issue (a tiny model's loss per document) is not implemented.
"""

from __future__ import annotations

import numpy as np

from cramlm.config import PruneConfig
from cramlm.errors import CramlmError

N_FEATURES = 1 << 16
DIMS = 32
MIN_SAMPLE = 20


class ClusterPruner:
    def __init__(self, cfg: PruneConfig):
        if cfg.method != "cluster":
            raise CramlmError(f"prune method {cfg.method!r} is not available (use cluster or none)")
        self.cfg = cfg
        self.dropped = 0

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
        scores = self._distance(z)
        self.threshold = float(np.quantile(scores, 1.0 - self.cfg.keep if self.cfg.keep_hard else self.cfg.keep))
        return self

    def _distance(self, z: np.ndarray) -> np.ndarray:
        return self.kmeans.transform(z).min(axis=1)

    def scores(self, texts: list[str]) -> np.ndarray:
        """Difficulty of each document: distance of its embedding to the nearest centroid."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return self._distance(self._embed(texts))

    def keep(self, texts: list[str]) -> list[str]:
        """The documents of a chunk that survive pruning (counted in `dropped`)."""
        if not texts:
            return texts
        s = self.scores(texts)
        mask = s >= self.threshold if self.cfg.keep_hard else s <= self.threshold
        self.dropped += int((~mask).sum())
        return [t for t, m in zip(texts, mask) if m]

    def describe(self) -> dict:
        return {"method": "cluster", "keep": self.cfg.keep, "keep_hard": self.cfg.keep_hard,
                "clusters": int(self.kmeans.n_clusters), "threshold": self.threshold}
