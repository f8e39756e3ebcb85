"""Tokenizers: train WordPiece (Cramming's choice), byte-level BPE (causal models) or Unigram with HF `tokenizers`,
or reuse a `tokenizer.json`. Every kind gets the same special tokens at the same ids, so models, loaders and
export never need to ask which tokenizer made the data.

Determinism: the same sample gives the same tokenizer.json on every run, for every kind. HF's BPE trainer is
deterministic when every character of a word is in its sorted alphabet, but its WordPiece trainer is not: it
numbers the `##x` continuation characters in hash-map order, and merge ties are broken by those numbers. So
WordPiece is trained here as that same BPE with continuation characters spelled as distinct private-use
characters (in the sorted alphabet), then renamed to `##x`. Unigram's pieces come out in hash-map order with
last-bit noise in their scores; they are put in a canonical order (score rounded to 1e-9, then text).
"""

from __future__ import annotations

import hashlib
import json
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from functools import lru_cache
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
    if kind == "wordpiece":
        tok.model = _train_wordpiece(_word_counts(texts, lowercase), vocab_size)
        tok.add_special_tokens(SPECIAL_TOKENS)  # so "[MASK]" in text is one token, never cut and lowercased
    else:
        tok.train_from_iterator(texts, trainer=trainer)
        if kind == "unigram":
            tok.model = _canonical_unigram(tok)
    check_special_tokens(tok, "the trained tokenizer")
    return tok


@lru_cache(maxsize=1)
def _bert_splitter():
    """A regex cutting a whitespace-free string as BertPreTokenizer does: every punctuation character (ASCII
    punctuation or a Unicode P* category) alone, runs of anything else together."""
    import re

    punct = "".join(c for c in map(chr, range(0x110000))
                    if c in string.punctuation or unicodedata.category(c).startswith("P"))
    return re.compile(f"[{re.escape(punct)}]|[^{re.escape(punct)}]+")


def _word_counts(texts: Iterable[str], lowercase: bool) -> Counter:
    """Word counts as the trainers gather them: normalized (Python's NFKC and lower() match our normalizer and
    run ~3x faster than calling it from Python), cut at whitespace, counted, and only the distinct
    whitespace tokens cut further at punctuation."""
    spaced: Counter = Counter()
    for text in texts:
        text = unicodedata.normalize("NFKC", text)
        spaced.update((text.lower() if lowercase else text).split())
    words: Counter = Counter()
    cut = _bert_splitter().findall
    for token, n in spaced.items():
        for word in cut(token):
            words[word] += n
    return words


PRIVATE = 0xF0000  # Unicode plane 15, private use: spells continuation characters during WordPiece training


def _train_wordpiece(words: Counter, vocab_size: int) -> models.WordPiece:
    """HF's WordPiece training (BPE merges with `##` continuation pieces, then the vocabulary as WordPiece), with
    continuation characters numbered in sorted order so that the result never depends on hash-map order."""
    words = Counter({w: n for w, n in words.items() if max(w) < chr(PRIVATE)})  # plane 15+ text is vanishingly rare
    alphabet = sorted({c for w in words for c in w})  # HF keeps every character, even ones never word-initial
    inner = sorted({c for w in words for c in w[1:]})
    mark = {ord(c): chr(PRIVATE + i) for i, c in enumerate(inner)}
    unmark = set(mark.values())
    unmark_table = {ord(v): k for k, v in mark.items()}

    def corpus() -> Iterator[str]:
        for word in sorted(words):
            yield (word[0] + word[1:].translate(mark) + " ") * words[word]

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bpe.train_from_iterator(corpus(), trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2, show_progress=False,
        initial_alphabet=alphabet))
    vocab = {}
    for piece, i in bpe.get_vocab().items():
        if piece[0] in unmark:
            piece = "##" + piece.translate(unmark_table)
        elif piece not in SPECIAL_TOKENS:
            piece = piece[0] + piece[1:].translate(unmark_table)
        vocab[piece] = i
    return models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100)


def _canonical_unigram(tok: Tokenizer) -> models.Unigram:
    """The trained Unigram pieces in a canonical order. The trainer lists the pieces by score (ties in hash-map
    order, last-bit noise in the scores), then appends the required characters it had not kept, in hash-set
    order, with scores falling by 1e-4 each. Here: scores rounded to 1e-9, the body sorted by score then text,
    and the tail's characters sorted by text onto the tail's (fixed) scores."""
    model = json.loads(tok.to_str())["model"]
    pieces = [(p, round(s, 9)) for p, s in model["vocab"] if p not in SPECIAL_TOKENS]
    start = len(pieces) - 1
    while start > 0 and (abs(pieces[start - 1][1] - pieces[start][1] - 1e-4) < 1e-7
                         or pieces[start - 1][1] == pieces[start][1]):
        start -= 1
    body, tail = pieces[:start], pieces[start:]
    body.sort(key=lambda ps: (-ps[1], ps[0]))
    tail = list(zip(sorted(p for p, _ in tail), (s for _, s in tail)))
    vocab = [(p, 0.0) for p in SPECIAL_TOKENS] + body + tail
    return models.Unigram(vocab, unk_id=UNK_ID, byte_fallback=False)


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
