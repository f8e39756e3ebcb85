"""Cascade end to end: a tiny run dir fine-tuned by eval.glue on a fixture SST-2, then fit / predict / report."""

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from cramlm.cascade import Cascade
from cramlm.cascade.transformer import classifier_flops, load_transformer
from cramlm.cli.cascade import app
from cramlm.config import resolve_config
from cramlm.data.tokenizer import train_tokenizer
from cramlm.errors import CramlmError
from cramlm.eval.glue import evaluate_glue
from cramlm.models.encoder import EncoderForSequenceClassification
from cramlm.models.registry import build_model
from cramlm.train.checkpoint import load_model, save_final

POS, NEG, FILL = ["good", "great"], ["bad", "dull"], "the a film plot it was story scene meh".split()


def sentences(rng, n):
    """Cue words decide the label, except for 'meh' sentences (coin flips): the linear stage is unsure of those."""
    rows = []
    for i in range(n):
        y = i % 2
        cue = (NEG, POS)[y][int(rng.integers(2))] if i % 5 else "meh"
        rows.append((" ".join([*rng.choice(FILL, 2), cue, *rng.choice(FILL, int(rng.integers(1, 4)))]), y))
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """GLUE-layout SST-2 fixture + a tiny pretrained run dir, fine-tuned by `evaluate_glue` (finetuned/sst2/)."""
    root = tmp_path_factory.mktemp("cascade")
    rng = np.random.default_rng(0)
    (root / "glue" / "SST-2").mkdir(parents=True)
    for split, n in (("train", 200), ("dev", 80)):
        body = "".join(f"{s}\t{y}\n" for s, y in sentences(rng, n))
        (root / "glue" / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + body)
    tok = train_tokenizer([" ".join(FILL + POS + NEG)] * 10, vocab_size=100)
    cfg = resolve_config(model="tiny", overrides=[
        "model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.d_ff=64",
        f"model.vocab_size={tok.get_vocab_size()}", "model.max_seq_len=16", "train.device=cpu"])
    run = root / "run"
    run.mkdir()
    save_final(run, build_model(cfg.model).state_dict(), cfg)
    tok.save(str(run / "tokenizer.json"))
    evaluate_glue(run, root / "glue", "sst2", overrides={"lr": 3e-3, "epochs": 4}, progress=False)
    return root, run / "finetuned" / "sst2"


@pytest.fixture(scope="module")
def small(setup):
    """The first layer of the same pretrain, fine-tuned the same way: the --small stage."""
    root, ft = setup
    res = invoke("shrink", ft.parent.parent, "--layers", "1", "--out", root / "small")
    assert res.exit_code == 0, res.output
    evaluate_glue(root / "small", root / "glue", "sst2", overrides={"lr": 3e-3, "epochs": 4}, progress=False)
    return root / "small"


def invoke(*args, input=None):
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_fit_predict_report(setup, tmp_path):
    root, ft = setup
    rules = tmp_path / "rules.yaml"
    rules.write_text("- {pattern: '\\bgreat\\b', label: positive}\n")
    out = tmp_path / "cascade"
    res = invoke("fit", ft, "--task", root / "glue" / "SST-2", "--out", out, "--max-drop", "1", "--rules", rules,
                 "--hash-bits", "12")
    assert res.exit_code == 0, res.output
    assert "answered by linear" in res.output and "FLOPs saved" in res.output and "held-out estimate" in res.output
    meta = json.loads((out / "cascade.json").read_text())
    cal = meta["calibration"]
    assert cal["accuracy"] >= cal["transformer_accuracy"] - 1.0
    assert not meta["transformer"].startswith("/") and (out / meta["transformer"]).resolve() == ft.resolve()
    assert [s["kind"] for s in meta["stages"]] == ["rules", "linear"] and meta["stages"][0]["threshold"] == 1.0
    assert cal["flops_per_input"]["linear"] < cal["flops_per_input"]["transformer"]
    assert not list(out.glob("*.pkl")) and not list(out.glob("*.pt"))

    # predict: TSV with a header and labels, an empty line and an over-long one
    dev = (root / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()
    inp = tmp_path / "in.tsv"
    inp.write_text("\n".join(dev[:6] + ["\t1", "great " * 40 + "\t1"] + dev[6:21]) + "\n")
    res = invoke("predict", out, "--input", inp, "--batch-size", "7", "--max-chars", "50")
    assert res.exit_code == 0, res.output
    lines = [ln.split("\t") for ln in res.stdout.strip().splitlines()]
    assert len(lines) == 21 and [int(ln[0]) for ln in lines] == [n for n in range(2, 24) if n != 7]
    assert {ln[2] for ln in lines} <= {"rules", "linear", "transformer"} and lines[5][2] == "rules"
    assert "skipped 1 empty input(s) (line 7)" in res.stderr and "truncated 1 input(s) over 50" in res.stderr
    assert "accuracy" in res.stderr and "21 inputs" in res.stderr

    # routed inputs get the transformer's own answer
    cascade = Cascade.load(out)
    texts = [row.split("\t")[0] for row in dev[1:]]
    alone = load_transformer(ft).predict_proba(texts).argmax(1)
    cascade.thresholds[-1] = max(cascade.thresholds[-1] or 0.0, 0.99)  # make sure some inputs reach the transformer
    pred, by = cascade.predict(texts)
    assert (by == 2).sum() >= 5 and (pred[by == 2] == alone[by == 2]).all()

    # stdin JSONL
    res = invoke("predict", out, input='{"sentence": "a great film"}\n{"sentence": "it was bad", "label": 0}\n')
    assert res.exit_code == 0 and res.stdout.splitlines()[0] == "1\tpositive\trules"

    for name in ("curve.png", "curve.html"):
        assert invoke("report", out, "--out", tmp_path / name).exit_code == 0
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (tmp_path / "curve.html").read_text()


def test_small_stage_sits_between_linear_and_transformer(setup, small, tmp_path):
    root, ft = setup
    full, _ = load_model(ft.parent.parent)
    shrunk, cfg = load_model(small)
    assert cfg.model.n_layers == 1 and shrunk.state_dict().keys() < full.state_dict().keys()
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in shrunk.state_dict().items())

    out = tmp_path / "cascade"
    res = invoke("fit", ft, "--task", root / "glue" / "SST-2", "--out", out, "--max-drop", "2", "--hash-bits", "12",
                 "--small", small / "finetuned" / "sst2")
    assert res.exit_code == 0, res.output
    assert "answered by small" in res.output
    meta = json.loads((out / "cascade.json").read_text())
    assert [s["kind"] for s in meta["stages"]] == ["linear", "small"]
    assert meta["stages"][1]["files"] == [f"small/{f}" for f in
                                          ("model.safetensors", "config.yaml", "tokenizer.json", "task.json")]
    flops = meta["calibration"]["flops_per_input"]
    assert flops["linear"] < flops["small"] < flops["transformer"]

    # each stage's answers are its own model's; the loaded copy of the small model is the one that was fitted
    cascade = Cascade.load(out)
    texts = [row.split("\t")[0] for row in (root / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()[1:]]
    small_model = load_transformer(small / "finetuned" / "sst2")
    assert flops["small"] == pytest.approx(small_model.flops_per_example(texts))  # budget/flops.py at 1 layer
    p_small = small_model.predict_proba(texts)
    assert np.array_equal(cascade.stages[1].predict_proba(texts), p_small)
    cascade.thresholds = [None, float(np.median(p_small.max(1)))]
    pred, by = cascade.predict(texts)
    assert 0 < (by == 1).sum() < len(texts)
    assert (pred[by == 1] == p_small.argmax(1)[by == 1]).all()
    assert (pred[by == 2] == load_transformer(ft).predict_proba(texts).argmax(1)[by == 2]).all()

    with pytest.raises(CramlmError, match="--layers must be between 1 and 1"):
        invoke("shrink", ft.parent.parent, "--layers", "2", "--out", tmp_path / "s2")
    with pytest.raises(CramlmError, match="already holds a model"):
        invoke("shrink", ft.parent.parent, "--layers", "1", "--out", small)


def test_bad_inputs_are_one_line_errors(setup, tmp_path):
    root, ft = setup
    out = tmp_path / "c"
    assert invoke("fit", ft, "--task", root / "glue" / "SST-2", "--out", out, "--max-train-examples", "60",
                  "--hash-bits", "10").exit_code == 0
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\na film\tneutral\n")
    with pytest.raises(CramlmError, match="label 'neutral' is not a label of this cascade"):
        invoke("predict", out, "--input", bad)
    with pytest.raises(CramlmError, match="no input to predict .*2 empty line"):
        invoke("predict", out, input="\n  \n")
    with pytest.raises(CramlmError, match="not valid JSON"):
        invoke("predict", out, input='{"sentence": \n')
    (root / "glue" / "CoLA").mkdir(exist_ok=True)
    with pytest.raises(CramlmError, match="fine-tuned on sst2, not on cola"):
        invoke("fit", ft, "--task", root / "glue" / "CoLA", "--out", tmp_path / "x")
    with pytest.raises(CramlmError, match="is not a fine-tuned classifier"):
        invoke("fit", tmp_path, "--task", root / "glue" / "SST-2", "--out", tmp_path / "x")
    with pytest.raises(CramlmError, match="must end in .png"):
        invoke("report", out, "--out", tmp_path / "curve.txt")


def test_classifier_flops_match_the_counted_matmuls():
    """budget/flops.py's trunk + the pooled head, checked against torch's counter (which leaves out attention's
    score and value products on CPU, so those are added: 4 L^2 d per layer)."""
    cfg = resolve_config(model="tiny", overrides=["model.n_layers=2", "model.d_model=32", "model.n_heads=2",
                                                   "model.d_ff=64", "model.vocab_size=120"]).model
    model = EncoderForSequenceClassification(cfg, 3).eval()
    for n in (5, 19):
        with FlopCounterMode(display=False) as counter:
            model(torch.randint(5, 100, (1, n)))
        attention = 4 * n * n * cfg.d_model * cfg.n_layers
        assert classifier_flops(cfg, n, 3) == counter.get_total_flops() + attention
