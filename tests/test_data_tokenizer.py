import random

import pytest

from cramlm.data.tokenizer import KINDS, SPECIAL_TOKENS, load_tokenizer, train_tokenizer, word_starts
from cramlm.errors import CramlmError

WORDS = "the model learns language from text by predicting masked words in sentences every day".split()
TEXTS = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) + "." for i in range(60)]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_special_tokens_at_fixed_ids_and_round_trips(tmp_path, kind):
    tok = train_tokenizer(TEXTS, kind, vocab_size=300)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.get_vocab_size() <= 300
    ids = tok.encode("the model learns", add_special_tokens=False).ids
    assert ids and min(ids) >= len(SPECIAL_TOKENS)
    assert tok.decode(ids).strip() == "the model learns"
    tok.save(str(tmp_path / "tokenizer.json"))
    again = load_tokenizer(tmp_path)
    assert again.encode("the model learns", add_special_tokens=False).ids == ids
    starts = word_starts(again)
    assert len(starts) == again.get_vocab_size() and all(starts[:5])
    masked = again.encode("the [MASK] learns", add_special_tokens=False).ids
    assert masked.count(SPECIAL_TOKENS.index("[MASK]")) == 1, "a [MASK] in text must stay one special token"


def test_lowercase_is_optional():
    lower = train_tokenizer(TEXTS, "wordpiece", 120, lowercase=True)
    cased = train_tokenizer(TEXTS, "wordpiece", 120, lowercase=False)
    assert lower.encode("The").ids == lower.encode("the").ids
    assert cased.encode("The").ids != cased.encode("the").ids


def test_foreign_tokenizer_without_our_special_tokens_is_rejected(tmp_path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "t.json"))
    with pytest.raises(CramlmError, match=r"\[PAD\] at id 0"):
        load_tokenizer(tmp_path / "t.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CramlmError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path / "bad.json")


def test_unknown_kind():
    with pytest.raises(CramlmError, match="unknown tokenizer"):
        train_tokenizer(TEXTS, "sentencepiece", 100)


@pytest.mark.parametrize("kind", KINDS)
def test_training_is_deterministic(tmp_path, kind):
    """Many tied merge counts and rare characters: HF's WordPiece and Unigram trainers alone give a different
    tokenizer.json nearly every run here."""
    from cramlm.data.tokenizer import save_tokenizer

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) + rng.choice(["", "s", "ing", "ed", "er", "ly", "é", "ß"])
                      for _ in range(rng.randint(10, 40))) for _ in range(200)]
    for i in range(4):
        save_tokenizer(train_tokenizer(texts, kind, 200), tmp_path / f"{i}.json")
    assert len({(tmp_path / f"{i}.json").read_bytes() for i in range(4)}) == 1


def test_wordpiece_matches_the_hf_trainer():
    """Our deterministic WordPiece training is HF's algorithm: on real prose (the embedded Python docs), the same
    vocabulary and the same tokens up to the tie-breaks HF makes at random."""
    from itertools import islice

    from cramlm.data.sources import iter_documents
    from cramlm.data.tokenizer import new_tokenizer

    texts = list(islice(iter_documents("python-docs"), 200))
    ours = train_tokenizer(texts, "wordpiece", 800)
    hf, trainer = new_tokenizer("wordpiece", 800)
    hf.train_from_iterator(texts, trainer=trainer)
    a, b = set(ours.get_vocab()), set(hf.get_vocab())
    assert len(a) == len(b) == 800 and len(a & b) >= 0.98 * len(b) and any(t.startswith("##") for t in a)
    same = sum(ours.encode(t).tokens == hf.encode(t).tokens for t in texts[:40])
    assert same >= 30
