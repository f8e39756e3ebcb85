"""Tokenizers: train WordPiece (Cramming's choice), byte-level BPE (causal models) or Unigram with HF `tokenizers`,
or reuse a `tokenizer.json`. Every kind gets the same special tokens at the same ids, so models, loaders and
export never need to ask which tokenizer made the data.

Determinism: byte-level BPE training gives the same tokenizer.json for the same sample on every run. HF's
WordPiece and Unigram trainers do not quite: where merge counts tie, the winner depends on hash-map order, so a
few tokens can differ between runs. Reuse a tokenizer.json (`tokenizer_file`) to rebuild a dataset byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from cramlm.errors import CramlmError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
KINDS = ("wordpiece", "bpe", "unigram")


def _normalizer(lowercase: bool) -> normalizers.Normalizer:
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    return normalizers.Sequence(steps)


def new_tokenizer(kind: str, vocab_size: int, lowercase: bool = True) -> tuple[Tokenizer, trainers.Trainer]:
    """An untrained tokenizer of the given kind and its trainer (special tokens first, so ids 0-4)."""
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2, show_progress=False
        )
    elif kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token="[UNK]", max_piece_length=16,
            show_progress=False,
        )
    else:
        raise CramlmError(f"unknown tokenizer {kind!r} (choose from {', '.join(KINDS)})")
    tok.normalizer = _normalizer(lowercase)
    return tok, trainer


def train_tokenizer(
    texts: Iterable[str], kind: str = "wordpiece", vocab_size: int = 32768, lowercase: bool = True
) -> Tokenizer:
    """Train on an iterable of documents (a sample of the corpus: training cost grows with its size)."""
    tok, trainer = new_tokenizer(kind, vocab_size, lowercase)
    tok.train_from_iterator(texts, trainer=trainer)
    check_special_tokens(tok, "the trained tokenizer")
    return tok


def check_special_tokens(tok: Tokenizer, where: str) -> None:
    """The contract every cramlm tokenizer keeps: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4."""
    for i, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != i:
            raise CramlmError(
                f"{where} must have {token} at id {i} (cramlm's special tokens: {' '.join(SPECIAL_TOKENS)})"
            )


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer.json, checked for cramlm's special tokens."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for a bad file
        reason = str(e).splitlines()[0] if str(e) else "unreadable"
        raise CramlmError(f"cannot load tokenizer {path}: {reason}") from None
    check_special_tokens(tok, f"tokenizer {path}")
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    """Write tokenizer.json with sorted keys: the same tokenizer always gives the same bytes (and hash)."""
    canonical = json.dumps(json.loads(tok.to_str()), sort_keys=True, ensure_ascii=False, indent=1)
    Path(path).write_text(canonical + "\n", encoding="utf-8")


def tokenizer_hash(path: str | Path) -> str:
    """sha256 of a tokenizer.json: names the tokenizer a dataset (and a model trained on it) was made with."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def word_starts(tok: Tokenizer) -> list[bool]:
    """For each id, whether the token begins a word (whole-word masking). Special tokens count as starts."""
    vocab = tok.get_vocab()
    starts = [True] * tok.get_vocab_size()
    model = type(tok.model).__name__
    for token, i in vocab.items():
        if i < len(SPECIAL_TOKENS) or i >= len(starts):
            continue
        if model == "WordPiece":
            starts[i] = not token.startswith("##")
        elif model == "BPE":
            starts[i] = token.startswith("\u0120")  # byte-level space marker
        else:
            starts[i] = token.startswith("\u2581")  # metaspace marker
    return starts
