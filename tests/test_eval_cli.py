import json

import pytest

from test_eval_glue import make_run_dir

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
    assert result["metrics"]["word_ppl"] > 1 and (dec / "results" / "ppl.json").is_file()
    data = tmp_path / "lambada.jsonl"
    data.write_text('{"text": "the cat sat on the mat"}\n{"text": "the dog ran under the table"}\n')
    code, out, err = cli("eval", "lambada", dec, "--data", data)
    assert code == 0, err
    assert "accuracy" in out and json.loads((dec / "results" / "lambada.json").read_text())["details"]["examples"] == 2


def test_encoder_pseudo_perplexity_and_fill_mask(cli, runs, tmp_path):
    enc, _ = runs
    text = tmp_path / "test.txt"
    text.write_text(TEXT)
    code, out, err = cli("eval", "ppl", enc, "--text", text, "--max-tokens", "20", "--json")
    assert code == 0, err
    assert json.loads(out)["settings"]["kind"] == "pseudo-perplexity"
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
