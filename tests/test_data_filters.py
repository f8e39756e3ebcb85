import random
import string

import pytest

from cramlm.config import DataConfig
from cramlm.data.filters import symbol_ratio, token_cost
from cramlm.data.prepare import prepare
from cramlm.data.tokenizer import UNK_ID, save_tokenizer, train_tokenizer

WORDS = "the model learns language from text by predicting masked words in sentences every day".split()


@pytest.mark.parametrize("text, ratio", [
    ("Привет, мир", 1 / 10),  # Cyrillic letters are text; the comma is not
    ("中文字符测试", 0.0),
    ("Ἐν ἀρχῇ ἦν ὁ λόγος", 0.0),  # Greek with combining marks
    ("١٢٣ ٤٥٦", 1.0),  # Arabic-Indic digits are digits
    ("→→→ ★★★ €€€ ©", 1.0),
    ("café 123", 3 / 7),
    ("hello, world!", 2 / 12),
    ("\x00\x01ab", 0.5),  # control characters are not text
    ("   ", 1.0),
])
def test_symbol_ratio_is_unicode_aware(text, ratio):
    assert symbol_ratio(text) == pytest.approx(ratio)


def test_ascii_fast_path_agrees_with_the_unicode_table():
    rng = random.Random(0)
    alphabet = string.printable + "\x00\x07\x1c\x7f"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert symbol_ratio(text) == pytest.approx(_table_ratio(text))


def _table_ratio(text):
    from cramlm.data.filters import NOT_TEXT, TEXT, _char_classes

    classes = [_char_classes()[ord(c)] for c in text]
    visible = sum(c in (TEXT, NOT_TEXT) for c in classes)
    return sum(c == NOT_TEXT for c in classes) / visible if visible else 1.0


def test_unk_tokens_cost_the_characters_they_hide():
    tok = train_tokenizer([" ".join(WORDS)] * 20, "wordpiece", 100)
    text = "the model " + "x9" * 60  # a 120-character word: WordPiece gives one [UNK]
    ids = tok.encode(text, add_special_tokens=False).ids
    assert ids.count(UNK_ID) == 1 and len(ids) == 3
    assert token_cost(tok, text, ids) == 2 + 120
    clean = tok.encode("the model", add_special_tokens=False).ids
    assert token_cost(tok, "the model", clean) == len(clean)


def test_compression_filter_drops_long_junk_words_and_unknown_scripts(tmp_path):
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(80)]
    blob = " ".join("".join(rng.choice(string.ascii_letters + string.digits) for _ in range(300)) for _ in range(8))
    docs += ["see the data: " + blob, "中文字符测试 " * 40 + "the text"]
    (tmp_path / "a.txt").write_text("\n\n".join(docs))
    save_tokenizer(train_tokenizer(docs[:80], "wordpiece", 120), tmp_path / "tok.json")  # knows only the prose
    cfg = DataConfig(seq_len=16, val_fraction=0.0, min_chars=8, max_tokens_per_char_z=3.0,
                     tokenizer_file=str(tmp_path / "tok.json"))
    m = prepare([str(tmp_path / "a.txt")], tmp_path / "ds", cfg, progress=False)
    assert m["dropped"].get("compression") == 2 and m["documents"] == 80
