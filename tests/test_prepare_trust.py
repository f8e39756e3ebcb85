"""`cramlm prepare` on the inputs a new user brings: document modes, long documents, JSON, one-line refusals,
a guarded --out, a validation split for small corpora, and a byte-identical dataset dir on rerun."""

import json
import random

import pytest

from cramlm.config import DataConfig
from cramlm.data.prepare import prepare
from cramlm.data.sources import iter_documents, split_document
from cramlm.data.store import Dataset
from cramlm.errors import CramlmError

WORDS = ("stock market price rose fell company said year share bank trade the a of to and in is it that for on "
         "with as by").split()
CFG = DataConfig(vocab_size=200, seq_len=16, min_chars=8, max_tokens_per_char_z=None)


def sentences(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 30))) + " ." for _ in range(n)]


def one_line_error(code, err, *words):
    return code == 2 and len(err.strip().splitlines()) == 1 and all(w in err for w in words)


def snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_one_sentence_per_line_file_gives_a_document_per_line(tmp_path, cli):
    lines = sentences(2000)
    (tmp_path / "train.txt").write_text("".join(f" {s} \n" for s in lines))  # Penn Treebank's layout
    m = prepare([str(tmp_path / "train.txt")], tmp_path / "ds", CFG, progress=False)
    assert m["sources"][0]["files"][0]["documents"] == "lines"
    unique = len(set(lines))
    assert 0.9 * unique <= m["documents"] <= unique and m["dropped"].get("duplicate", 0) == len(lines) - unique
    assert m["splits"]["val"]["documents"] >= 10 and m["splits"]["val"]["sequences"] >= 1 and not m["warnings"]
    # the same file read as paragraphs is one document: nothing can be held out, and prepare says so loudly
    code, out, err = cli("prepare", tmp_path / "train.txt", "--out", tmp_path / "para", "--documents", "paragraphs",
                         "--seq-len", "16", "--vocab-size", "200", "--quiet", "data.min_chars=8")
    assert code == 0 and "documents: paragraphs (1 file)" in out
    assert err.startswith("warning: no validation split: the corpus is a single document") and "--documents" in err
    whole = Dataset(tmp_path / "para").manifest
    assert whole["documents"] == 1 and whole["splits"]["val"]["documents"] == 0 and len(whole["warnings"]) == 1


def test_auto_decides_per_file_and_file_mode_reads_each_file_whole(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("\n\n".join(sentences(30, seed=1)))
    (tmp_path / "src" / "b.txt").write_text("\n".join(sentences(20, seed=2)))
    assert len(list(iter_documents(str(tmp_path / "src")))) == 50
    assert len(list(iter_documents(str(tmp_path / "src"), documents="file"))) == 2
    m = prepare([str(tmp_path / "src")], tmp_path / "ds", CFG, progress=False)
    assert [f["documents"] for f in m["sources"][0]["files"]] == ["paragraphs", "lines"]


def test_split_document_prefers_paragraph_line_sentence_word_then_cuts():
    assert split_document("aaaa bbbb\n\ncccc dddd", 12) == ["aaaa bbbb", "cccc dddd"]
    assert split_document("aaaa. bbbb\ncccc dddd", 14) == ["aaaa. bbbb", "cccc dddd"]
    assert split_document("aaaa bbb. cccc dddd eeee", 14) == ["aaaa bbb.", "cccc dddd eeee"]
    assert split_document("aaaa bbbb cccc", 8) == ["aaaa", "bbbb", "cccc"]
    assert split_document("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]
    text = " ".join(sentences(300))
    pieces = split_document(text, 500)
    assert all(250 <= len(p) <= 500 for p in pieces[:-1]) and all(p.endswith(".") for p in pieces[:-1])
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")  # nothing lost


def test_a_long_one_line_file_is_split_not_dropped(tmp_path):
    text = " ".join(sentences(25_000))
    assert len(text) > 2_000_000 and "\n" not in text
    (tmp_path / "big.txt").write_text(text)
    cfg = CFG.model_copy(update={"max_chars": 100_000, "tokenizer_sample_mb": 0.5})
    m = prepare([str(tmp_path / "big.txt")], tmp_path / "ds", cfg, progress=False)
    assert m["split_long"] == 1 and "too_long" not in m["dropped"]
    assert len(text) // 100_000 <= m["documents"] <= 2 * len(text) // 100_000
    assert m["splits"]["val"]["documents"] >= 1 and m["tokens"] > 300_000


def test_json_array_file(tmp_path):
    records = [{"text": s, "id": i} for i, s in enumerate(sentences(60))] + ["a plain string record is text too"]
    (tmp_path / "d.json").write_text(json.dumps(records, indent=2))
    assert list(iter_documents(str(tmp_path / "d.json"))) == [r["text"] for r in records[:-1]] + [records[-1]]
    m = prepare([str(tmp_path / "d.json")], tmp_path / "ds", CFG, progress=False)
    assert m["documents"] == 61 and m["sources"][0]["files"][0]["documents"] == "records"
    (tmp_path / "bad.json").write_text('[{"text": "x"},')
    with pytest.raises(CramlmError, match="bad.json is not valid JSON"):
        list(iter_documents(str(tmp_path / "bad.json")))


def test_text_under_another_field(tmp_path, cli):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"title": "t", "body": s, "n": 1}) + "\n" for s in sentences(1204)))
    code, _, err = cli("prepare", path, "--out", tmp_path / "ds", "--seq-len", "16", "--vocab-size", "200")
    assert one_line_error(code, err, "0 of 1,204 records have the field 'text'", "fields seen: title, body, n",
                          "use --text-field body")
    assert not (tmp_path / "ds").exists()
    code, _, err = cli("prepare", path, "--out", tmp_path / "ds", "--seq-len", "16", "--vocab-size", "200",
                       "--text-field", "body", "--quiet")
    assert code == 0, err
    assert Dataset(tmp_path / "ds").manifest["documents"] > 1000


def test_nothing_usable_names_each_cause(tmp_path, cli):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "short.txt").write_text("x\n\ny\n\nzz\n")
    (tmp_path / "src" / "blob.bin").write_bytes(bytes(range(256)) * 8)
    code, _, err = cli("prepare", tmp_path / "src", "--out", tmp_path / "new" / "ds")
    assert one_line_error(code, err, "3 documents read", "3 shorter than data.min_chars=32", "data.min_chars=0",
                          "1 binary file skipped (not text)")
    assert not (tmp_path / "new").exists()  # a failed prepare leaves no folder behind


def test_a_failure_after_writing_started_leaves_no_out_folder(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(sentences(3)))
    with pytest.raises(CramlmError, match="not one sequence"):
        prepare([str(tmp_path / "a.txt")], tmp_path / "ds", CFG.model_copy(update={"seq_len": 512}), progress=False)
    assert not (tmp_path / "ds").exists()


def test_out_is_checked_before_anything_is_written(tmp_path, cli):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("\n".join(sentences(400)))
    args = ("prepare", src, "--seq-len", "16", "--vocab-size", "200", "--quiet")
    assert cli(*args, "--out", tmp_path / "ds")[0] == 0
    before = snapshot(tmp_path / "ds")
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "ds").glob("*/*")}
    assert cli(*args, "--out", tmp_path / "ds")[0] == 0  # the same prepare again resumes: no unit redone
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ds").glob("*/*")} == mtimes
    assert snapshot(tmp_path / "ds") == before
    code, _, err = cli(*args, "--out", tmp_path / "ds", "--documents", "file")
    assert one_line_error(code, err, "holds a dataset made from another config", "data.documents=auto (now file)",
                          "--force")
    (src / "a.txt").write_text("\n".join(sentences(300)))
    code, _, err = cli(*args, "--out", tmp_path / "ds")
    assert one_line_error(code, err, "an earlier version of the sources", "--force")
    assert snapshot(tmp_path / "ds") == before  # refused: byte for byte as it was
    assert cli(*args, "--out", tmp_path / "ds", "--force")[0] == 0
    assert snapshot(tmp_path / "ds") != before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = cli(*args, "--out", tmp_path / "mine")
    assert one_line_error(code, err, "is not empty and holds no cramlm dataset", "--force")
    code, _, err = cli(*args, "--out", src / "ds")
    assert one_line_error(code, err, "is inside the input") and not (src / "ds").exists()
    code, _, err = cli("prepare", src / "a.txt", "--out", src / "a.txt")
    assert one_line_error(code, err, "is the input")
    code, _, err = cli(*args, "--out", tmp_path / "other", "train.lr=1")
    assert one_line_error(code, err, "prepare reads only the data section", "train.lr=1")
    code, _, err = cli(*args, "--out", tmp_path / "other", "seq_len=64")
    assert one_line_error(code, err, "did you mean data.seq_len=64")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("kind,n", [("jsonl", 40), ("txt", 69), ("txt", 2)])
def test_small_corpora_get_a_validation_split(tmp_path, kind, n):
    docs = [" ".join(sentences(3, seed=i)) for i in range(n)]
    path = tmp_path / f"d.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    else:
        path.write_text("\n\n".join(docs))
    m = prepare([str(path)], tmp_path / "ds", CFG, progress=False)  # val_fraction 0.01
    val, train = m["splits"]["val"], m["splits"]["train"]
    assert val["documents"] >= 1 and val["sequences"] >= 1 and train["sequences"] >= 1 and not m["warnings"]
    assert val["documents"] <= max(1, n // 10)  # only as much as one sequence needs
    assert val["documents"] + train["documents"] == n
    assert Dataset(tmp_path / "ds").sequences("val").shape[0] == val["sequences"]


@pytest.mark.parametrize("documents", ["auto", "paragraphs", "lines", "file"])
def test_same_input_twice_gives_a_byte_identical_dataset_dir(tmp_path, documents):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.txt").write_text("\n\n".join("\n".join(sentences(4, seed=10 * i + j)) for j in range(40)))
    (src / "3.txt").write_text("\n".join(sentences(120, seed=99)))
    cfg = CFG.model_copy(update={"documents": documents, "max_chars": 5000})
    first = prepare([str(src)], tmp_path / "a", cfg, progress=False)
    prepare([str(src)], tmp_path / "b", cfg, workers=2, progress=False)
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert a == b and "manifest.json" in a and any(k.startswith("train/") for k in a)
    assert first["splits"]["val"]["sequences"] >= 1 and not first["warnings"]
    if documents == "file":
        assert first["split_long"] == 4  # every file is one document, over max_chars: split, not dropped
