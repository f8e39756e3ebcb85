"""The cheapest learned first stage: logistic regression on hashed word and character n-grams.

Hashing needs no vocabulary, so the stage is fully described by its vectorizer parameters and its weights: it is
saved as JSON + safetensors (no pickle) and rebuilt exactly. Probabilities are computed here with numpy from the saved
weights, so a loaded stage answers bit-for-bit like the one that was calibrated.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy import sparse

from cramlm.errors import CramlmError

Text = str | tuple[str, ...]


@dataclass(frozen=True)
class HashingParams:
    """Everything needed to rebuild the (stateless) feature map."""

    n_features: int = 2**19
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    lowercase: bool = True


def _join(text: Text) -> str:
    """Sentence pairs become one string; the separator is not a word so it adds no spurious feature."""
    return text if isinstance(text, str) else " \u2016 ".join(text)


class LinearStage:
    """Hashed word + char n-grams -> logistic regression; `predict_proba` over the task's labels."""

    kind = "linear"

    def __init__(self, labels: Sequence[str], coef: np.ndarray, intercept: np.ndarray,
                 params: HashingParams = HashingParams(), C: float = 2.0):
        self.labels = list(labels)
        self.coef = np.asarray(coef, dtype=np.float32)  # (1, 2F) for two labels, else (n_labels, 2F)
        self.intercept = np.asarray(intercept, dtype=np.float32)
        self.params = params
        self.C = C
        self._vectorizers = _vectorizers(params)

    # ------------------------------------------------------------------ features and scores

    def features(self, texts: Sequence[Text]) -> sparse.csr_matrix:
        docs = [_join(t) for t in texts]
        word, char = self._vectorizers
        return sparse.hstack([word.transform(docs), char.transform(docs)], format="csr", dtype=np.float32)

    def predict_proba(self, texts: Sequence[Text]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        scores = np.asarray(self.features(texts) @ self.coef.T) + self.intercept
        if len(self.labels) == 2:  # one logit: p(label 1)
            p1 = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1).astype(np.float32)
        scores -= scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def flops_per_example(self, texts: Sequence[Text]) -> float:
        """Multiply-adds of the sparse dot product (hashing itself is integer work, seen in wall time)."""
        if not len(texts):
            return 0.0
        nnz = self.features(texts).nnz / len(texts)
        return 2.0 * nnz * self.coef.shape[0]

    # ------------------------------------------------------------------ training

    @classmethod
    def fit(cls, texts: Sequence[Text], y: Sequence[int], labels: Sequence[str],
            params: HashingParams = HashingParams(), C: float = 2.0, max_iter: int = 200) -> "LinearStage":
        """Train on the task's train split (seconds on SST-2). `y` holds indices into `labels`."""
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y)
        missing = sorted(set(range(len(labels))) - set(y.tolist()))
        if missing:
            names = ", ".join(labels[i] for i in missing)
            raise CramlmError(f"the train split has no example of label(s) {names}: cannot train the linear stage")
        stage = cls(labels, np.zeros((1, 1)), np.zeros(1), params, C)
        model = LogisticRegression(C=C, max_iter=max_iter, tol=1e-4)
        model.fit(stage.features(texts), y)
        return cls(labels, model.coef_, model.intercept_, params, C)

    # ------------------------------------------------------------------ persistence (no pickle)

    def save(self, directory: Path, name: str = "linear") -> list[str]:
        directory = Path(directory)
        save_file({"coef": self.coef, "intercept": self.intercept}, str(directory / f"{name}.safetensors"))
        meta = {"kind": self.kind, "labels": self.labels, "hashing": asdict(self.params), "C": self.C}
        (directory / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
        return [f"{name}.json", f"{name}.safetensors"]

    @classmethod
    def load(cls, directory: Path, name: str = "linear") -> "LinearStage":
        directory = Path(directory)
        try:
            meta = json.loads((directory / f"{name}.json").read_text())
            tensors = load_file(str(directory / f"{name}.safetensors"))
        except (OSError, ValueError) as e:
            raise CramlmError(f"cannot read the linear stage in {directory}: {e}") from None
        h = meta["hashing"]
        params = HashingParams(h["n_features"], tuple(h["word_ngrams"]), tuple(h["char_ngrams"]), h["lowercase"])
        return cls(meta["labels"], tensors["coef"], tensors["intercept"], params, meta.get("C", 2.0))


def _vectorizers(p: HashingParams):
    from sklearn.feature_extraction.text import HashingVectorizer

    common = dict(n_features=p.n_features, lowercase=p.lowercase, alternate_sign=False, norm="l2",
                  dtype=np.float32)
    return (HashingVectorizer(analyzer="word", ngram_range=p.word_ngrams, token_pattern=r"(?u)\b\w+\b|[^\w\s]",
                              **common),
            HashingVectorizer(analyzer="char_wb", ngram_range=p.char_ngrams, **common))
