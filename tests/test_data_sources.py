import bz2
import itertools
import gzip
import json
import sys
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from cramlm.data.python_docs import iter_python_docs
from cramlm.data.sources import fingerprint, iter_documents
from cramlm.errors import CramlmError

PARAS = ["The first paragraph has two lines\nthat belong together.", "A second paragraph.", "Third one here."]


def docs(spec, **kw):
    return list(iter_documents(str(spec), **kw))


def test_python_docs_is_real_deterministic_and_imports_nothing():
    before = set(sys.modules)
    first = list(iter_python_docs())
    assert not {m for m in set(sys.modules) - before if m in ("tkinter", "turtle", "antigravity", "this")}
    assert "antigravity" not in sys.modules  # importing it would open a browser: we only parse sources
    assert len(first) > 3000
    assert sum(map(len, first)) > 1_500_000
    assert len(set(first)) == len(first)  # deduplicated
    assert any("Return" in d for d in first) and any("for" in d and "statement" in d for d in first[:200])
    assert first[:300] == list(itertools.islice(iter_python_docs(), 300))


def test_text_file_splits_paragraphs(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(PARAS) + "\n")
    assert docs(tmp_path / "a.txt") == PARAS


@pytest.mark.parametrize("suffix,opener", [(".gz", gzip.open), (".bz2", bz2.open), (".zst", None)])
def test_compressed_text_and_jsonl(tmp_path, suffix, opener):
    raw = "\n\n".join(PARAS).encode()
    lines = "".join(json.dumps({"text": p}) + "\n" for p in PARAS).encode()
    for name, data in (("t.txt" + suffix, raw), ("j.jsonl" + suffix, lines)):
        path = tmp_path / name
        if opener:
            with opener(path, "wb") as f:
                f.write(data)
        else:
            path.write_bytes(zstandard.ZstdCompressor().compress(data))
        assert docs(path) == PARAS


def test_folder_is_recursive_sorted_and_glob(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two")
    (tmp_path / "1.txt").write_text("one")
    (tmp_path / ".hidden").write_text("secret")
    assert docs(tmp_path) == ["one", "two"]
    assert docs(f"{tmp_path}/**/*.txt") == ["one", "two"]


def test_empty_folder_and_missing_source_are_errors(tmp_path):
    with pytest.raises(CramlmError, match="holds no files"):
        docs(tmp_path)
    with pytest.raises(CramlmError, match="does not exist"):
        docs(tmp_path / "nope.txt")
    with pytest.raises(CramlmError, match="no files match"):
        docs(f"{tmp_path}/*.txt")


def test_binary_file_and_bad_utf8_are_skipped_and_counted(tmp_path):
    (tmp_path / "a.bin").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "b.txt").write_bytes(b"good line\n\xff\xfe bad \xc3\x28 line\nmore good\n")
    skipped = Counter()
    assert docs(tmp_path, skipped=skipped, documents="paragraphs") == ["good line\nmore good"]
    assert skipped == {"binary_files": 1, "non_utf8_lines": 1}


def test_jsonl_bad_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "kept"}\nnot json\n{"other": 1}\n[1, 2]\n\n{"body": "x"}\n')
    skipped = Counter()
    assert docs(path, skipped=skipped) == ["kept"]
    assert skipped == {"bad_json_lines": 1, "missing_field_lines": 3}
    assert docs(path, text_field="body") == ["x"]


def test_parquet_column_and_missing_column(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": PARAS, "n": [1, 2, 3]}), path)
    assert docs(path, text_field="body") == PARAS
    with pytest.raises(CramlmError, match="no column 'text'.*body"):
        docs(path)


def test_huge_single_line_streams(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("word " * 10_000_000)  # one 50 MB line
    (doc,) = docs(path)
    assert len(doc) == 50_000_000 - 1


def test_fingerprint_names_files_sizes_and_mtimes(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    fp = fingerprint(str(tmp_path))
    assert fp["files"][0]["bytes"] == 5 and fp["files"][0]["path"].endswith("a.txt") and "mtime" in fp["files"][0]
    assert "python" in fingerprint("python-docs")


def test_saved_hugging_face_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"body": PARAS}).save_to_disk(str(tmp_path / "hf"))
    assert docs(tmp_path / "hf", text_field="body") == PARAS
    with pytest.raises(CramlmError, match="no column 'text'"):
        docs(tmp_path / "hf")
