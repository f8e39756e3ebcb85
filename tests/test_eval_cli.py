import json

import pytest

from test_eval_glue import make_run_dir
from test_train_preflight import snapshot

TEXT = "the cat sat on the mat . the dog ran under the big red table near the small blue house .\n" * 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return make_run_dir(root / "enc"), make_run_dir(root / "dec", "decoder")


def test_ppl_and_lambada_json(cli, runs, tmp_path):
    _, dec = runs
    text = tmp_path / "test.txt"
    text.write_text(TEXT)
    code, out, err = cli("eval", "ppl", dec, "--text", text, "--stride", "16", "--window", "32", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["name"] == "ppl" and result["settings"]["stride"] == 16 and result["details"]["words"] == 84
    written = dec / "results" / f"ppl-{tmp_path.name}-test.json"
    assert result["metrics"]["word_ppl"] > 1 and result["key"] == written.stem and written.is_file()
    data = tmp_path / "lambada.jsonl"
    data.write_text('{"text": "the cat sat on the mat"}\n{"text": "the dog ran under the table"}\n')
    code, out, err = cli("eval", "lambada", dec, "--data", data)
    assert code == 0, err
    saved = json.loads((dec / "results" / f"lambada-{tmp_path.name}-lambada.json").read_text())
    assert "accuracy" in out and saved["details"]["examples"] == 2


def test_encoder_pseudo_perplexity_and_fill_mask(cli, runs, tmp_path):
    enc, _ = runs
    text = tmp_path / "test.txt"
    text.write_text(TEXT)
    code, out, err = cli("eval", "ppl", enc, "--text", text, "--max-tokens", "20", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["settings"]["kind"] == "pseudo-perplexity" and result["settings"]["stride"] is None
    assert set(result["metrics"]) == {"pseudo_token_ppl", "pseudo_bits_per_token"}  # no word count: truncated
    code, out, err = cli("eval", "fill-mask", enc, "the cat [MASK] on the [MASK]", "--top-k", "3")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[MASK] 1:") and len(lines[1].split()) == 2 + 2 * 3


def test_mlm_loss_on_a_text_file(cli, runs, tmp_path):
    enc, _ = runs
    text = tmp_path / "test.txt"
    text.write_text(TEXT * 10)
    code, out, err = cli("eval", "mlm", enc, "--text", text, "--mask-rate", "0.25", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["settings"]["objective"] == "mlm" and result["settings"]["seq_len"] == 64
    assert 0 < result["metrics"]["loss"] < 10 and result["details"]["sequences"] >= 1
    code, out2, _ = cli("eval", "mlm", enc, "--text", text, "--mask-rate", "0.25", "--json")
    assert json.loads(out2)["metrics"]["loss"] == result["metrics"]["loss"]  # same seed, same positions


@pytest.mark.parametrize("args,message", [
    (["ppl", "{run}", "--text", "/nonexistent.txt"], "does not exist"),
    (["ppl", "/no/such/run", "--text", "/nonexistent.txt"], "not a run dir"),
    (["glue", "{run}", "--glue-dir", "/no/glue", "--tasks", "rte"], "GLUE dir /no/glue does not exist"),
    (["glue", "{run}", "--glue-dir", "/tmp", "--tasks", "rte,nope"], "unknown GLUE task 'nope'"),
    (["glue", "{run}", "--glue-dir", "/tmp", "--seeds", "a,b"], "--seeds"),
    (["fill-mask", "{run}", "no mask here"], "no [MASK]"),
    (["mlm", "{run}"], "either a text file or a dataset dir"),
])
def test_bad_input_is_one_line_exit_2(cli, runs, args, message):
    args = [a.replace("{run}", str(runs[0])) for a in args]
    code, _, err = cli("eval", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_unigram_baseline_and_dataset_val_loss(cli, runs, tmp_path):
    """`ppl --unigram DATASET` scores the same tokens under the add-one unigram model of the dataset's training
    tokens; `mlm --data DATASET` scores its val split next to the unigram baseline on the same positions."""
    import math

    import numpy as np

    from cramlm.data.store import Dataset
    from cramlm.data.tokenizer import load_tokenizer

    _, dec = runs
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"{i}.txt").write_text(f"document {i} : " + TEXT * (1 + i % 3))
    code, _, err = cli("prepare", src, "--out", tmp_path / "ds", "--tokenizer-file", dec / "tokenizer.json",
                       "--seq-len", "16", "--val-fraction", "0.2", "--quiet")
    assert code == 0, err
    text = tmp_path / "test.txt"
    text.write_text("the big dog sat on the small mat .\n")
    code, out, err = cli("eval", "ppl", dec, "--text", text, "--unigram", tmp_path / "ds", "--json")
    assert code == 0, err
    result = json.loads(out)
    ds = Dataset(tmp_path / "ds")
    counts = np.bincount(np.asarray(ds.sequences("train")).ravel(), minlength=ds.vocab_size)
    ids = load_tokenizer(dec / "tokenizer.json").encode(text.read_text(), add_special_tokens=False).ids
    expected = -sum(math.log((counts[i] + 1) / (counts.sum() + len(counts))) for i in ids)
    assert result["details"]["unigram_nll"] == pytest.approx(expected, rel=1e-9)
    assert result["metrics"]["unigram_word_ppl"] == pytest.approx(math.exp(expected / 9), rel=1e-9)
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text('{"text": "the cat sat on the mat"}\n{"text": "the dog ran under the big table"}\n')
    code, out, err = cli("eval", "lambada", dec, "--data", lambada, "--unigram", tmp_path / "ds", "--json")
    assert code == 0, err
    tok = load_tokenizer(dec / "tokenizer.json")
    words = [tok.encode(w, add_special_tokens=False).ids for w in ("mat", "table")]
    mean_logp = np.mean([sum(math.log((counts[i] + 1) / (counts.sum() + len(counts))) for i in w) for w in words])
    assert json.loads(out)["metrics"]["unigram_ppl"] == pytest.approx(math.exp(-mean_logp), rel=1e-9)
    code, out, err = cli("eval", "mlm", dec, "--data", tmp_path / "ds", "--json")
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    assert 0 < metrics["loss"] < 10 and 0 < metrics["unigram_loss"] < 10

    (tmp_path / "other").mkdir()
    code, _, err = cli("prepare", src, "--out", tmp_path / "other" / "ds", "--vocab-size", "200", "--quiet")
    assert code == 0, err
    code, _, err = cli("eval", "ppl", dec, "--text", text, "--unigram", tmp_path / "other" / "ds")
    assert code == 2 and "another tokenizer" in err and len(err.strip().splitlines()) == 1


def test_each_input_keeps_its_own_results_file_and_report_shows_them(cli, tmp_path):
    from cramlm.eval.results import load_results
    from cramlm.report.html import run_rows
    from cramlm.report.plots import load_run

    dec = make_run_dir(tmp_path / "dec", "decoder")
    for name in ("wiki", "books"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "test.txt").write_text(TEXT)
        code, _, err = cli("eval", "ppl", dec, "--text", tmp_path / name / "test.txt")
        assert code == 0, err
    code, _, err = cli("eval", "ppl", dec, "--text", tmp_path / "wiki" / "test.txt", "--stride", "8")
    assert code == 0, err  # the same input again: its file is replaced
    assert sorted(load_results(dec)) == ["ppl-books-test", "ppl-wiki-test"]
    assert load_results(dec)["ppl-wiki-test"].settings["stride"] == 8
    (dec / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    header, _ = run_rows([load_run(dec)])
    assert "ppl-books-test" in header and "ppl-wiki-test" in header


def test_mlm_on_a_dataset_with_another_tokenizer_is_refused(cli, runs, tiny_dataset):
    enc, _ = runs
    before = snapshot(enc)
    code, _, err = cli("eval", "mlm", enc, "--data", tiny_dataset)
    assert code == 2 and "another tokenizer" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(enc) == before


@pytest.mark.parametrize("content,message", [(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary, not text"),
                                             ("caf\xe9 au lait".encode("latin-1"), "not UTF-8 text")])
def test_a_text_that_is_not_utf8_text_is_refused(cli, runs, tmp_path, content, message):
    enc, dec = runs
    path = tmp_path / "file.txt"
    path.write_bytes(content)
    for args in (["ppl", dec, "--text", path], ["mlm", enc, "--text", path], ["lambada", dec, "--data", path]):
        code, _, err = cli("eval", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_stride_on_an_encoder_is_refused(cli, runs, tmp_path):
    enc, _ = runs
    (tmp_path / "t.txt").write_text(TEXT)
    code, _, err = cli("eval", "ppl", enc, "--text", tmp_path / "t.txt", "--stride", "16")
    assert code == 2 and "--stride is for causal models" in err and len(err.strip().splitlines()) == 1


def test_a_long_pseudo_perplexity_says_how_long_first(cli, runs, tmp_path, monkeypatch):
    from cramlm.eval import progress

    enc, _ = runs
    (tmp_path / "t.txt").write_text(TEXT)
    monkeypatch.setattr(progress, "SLOW_SECONDS", -1.0)  # every loop counts as long
    code, out, err = cli("eval", "ppl", enc, "--text", tmp_path / "t.txt", "--json")
    assert code == 0, err
    assert "pseudo-perplexity: " in err and "at this speed" in err and "--max-tokens" in err
    assert json.loads(out)["metrics"]["pseudo_word_ppl"] > 1  # stdout stays the result alone
