import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cramlm.errors import CramlmError
from cramlm.eval.glue import TASKS, parse_tasks, read_split


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(r) + "\n" for r in rows))


MNLI_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
               "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]


def _mnli_row(i, a, b, label):
    return [str(i), "1", "1a", "fiction", "(", "(", "(", "(", a, b, label, label]


def test_mnli_tsv_fixture_with_matched_and_mismatched(tmp_path):
    rows = [_mnli_row(0, "A cat sat.", "A cat is sitting.", "entailment"),
            _mnli_row(1, 'He said "no".', "He agreed.", "contradiction"),
            _mnli_row(2, "It rains.", "It is May.", "neutral")]
    for name in ("train", "dev_matched", "dev_mismatched"):
        _write(tmp_path / "MNLI" / f"{name}.tsv", [MNLI_HEADER] + rows)
    mnli = TASKS["mnli"]
    train = read_split(tmp_path, mnli, "train")
    assert train.texts[1] == ('He said "no".', "He agreed.")  # quotes kept verbatim (QUOTE_NONE)
    assert train.labels.tolist() == [0, 2, 1]
    assert len(read_split(tmp_path, mnli, "dev_mismatched")) == 3


def test_qqp_tsv_skips_malformed_rows(tmp_path):
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    _write(tmp_path / "QQP" / "train.tsv", [header, ["0", "1", "2", "How?", "Why?", "0"],
                                            ["1", "3", "4", "broken row"], ["2", "5", "6", "A?", "A?", "1"]])
    split = read_split(tmp_path, TASKS["qqp"], "train")
    assert split.texts == [("How?", "Why?"), ("A?", "A?")] and split.labels.tolist() == [0, 1]


def test_headerless_cola_and_bad_label(tmp_path):
    _write(tmp_path / "CoLA" / "train.tsv", [["gj04", "1", "", "Good sentence."], ["gj04", "0", "*", "Sentence bad."]])
    split = read_split(tmp_path, TASKS["cola"], "train")
    assert split.texts == [("Good sentence.",), ("Sentence bad.",)] and split.labels.tolist() == [1, 0]
    _write(tmp_path / "RTE" / "dev.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "maybe"]])
    with pytest.raises(CramlmError, match="bad rte label 'maybe'"):
        read_split(tmp_path, TASKS["rte"], "dev")


def test_hf_parquet_layout_drops_unlabelled_rows(tmp_path):
    folder = tmp_path / "stsb"
    folder.mkdir()
    table = pa.table({"sentence1": ["a", "b", "c"], "sentence2": ["x", "y", "z"], "label": [4.5, -1.0, 0.25],
                      "idx": [0, 1, 2]})
    pq.write_table(table, folder / "validation-00000-of-00001.parquet")
    split = read_split(tmp_path, TASKS["stsb"], "dev")
    assert split.texts == [("a", "x"), ("c", "z")]
    assert split.labels.dtype == np.float32 and split.labels.tolist() == [4.5, 0.25]


def test_parse_tasks(tmp_path):
    assert [t.name for t in parse_tasks("RTE,SST-2,rte")] == ["rte", "sst2"]
    assert len(parse_tasks("all")) == 9
    with pytest.raises(CramlmError, match="unknown GLUE task 'foo'"):
        parse_tasks("rte,foo")
    with pytest.raises(CramlmError, match="has no folder for rte"):
        read_split(tmp_path, TASKS["rte"], "train")
