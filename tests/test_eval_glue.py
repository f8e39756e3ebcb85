import json

import numpy as np
import pytest
from rich.console import Console

from cramlm.config import resolve_config
from cramlm.data.tokenizer import train_tokenizer
from cramlm.errors import CramlmError
from cramlm.eval.glue import TASKS, Split, encode, evaluate_glue, glue_table, length_sorted_batches
from cramlm.eval.results import read_result
from cramlm.models.registry import build_model
from cramlm.train.checkpoint import load_weights, save_final

WORDS = "the a cat dog sat ran on under mat table house tree red blue big small it was very".split()


def _sentences(rng, n, cue):
    return [" ".join([*rng.choice(WORDS, 4), cue, *rng.choice(WORDS, int(rng.integers(1, 8)))]) for _ in range(n)]


def make_run_dir(path, arch="encoder", model="tiny"):
    """A tiny pretrained run dir in the layout the trainer writes: final/ weights + config, tokenizer.json."""
    tok = train_tokenizer([" ".join(WORDS + ["good", "bad"])] * 20, vocab_size=120)
    cfg = resolve_config(model=model, overrides=[
        f"model.arch={arch}", "model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.d_ff=64",
        f"model.vocab_size={tok.get_vocab_size()}", "model.max_seq_len=64", "train.device=cpu"])
    path.mkdir(parents=True)
    save_final(path, build_model(cfg.model).state_dict(), cfg)
    tok.save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module")
def glue_fixture(tmp_path_factory):
    """A trivially separable SST-2: the label is whether the sentence holds 'good' or 'bad'."""
    root = tmp_path_factory.mktemp("glue")
    rng = np.random.default_rng(0)
    for name, n in (("train", 160), ("dev", 60)):
        rows = [(s, "1") for s in _sentences(rng, n // 2, "good")] + [(s, "0") for s in _sentences(rng, n // 2, "bad")]
        (root / "SST-2").mkdir(exist_ok=True)
        (root / "SST-2" / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    return root


def test_finetune_learns_a_separable_task(tmp_path, glue_fixture):
    run = make_run_dir(tmp_path / "run")
    result = evaluate_glue(run, glue_fixture, "sst2", overrides={"lr": 3e-3, "epochs": 4}, progress=False)
    assert result.metrics["sst2"] > 95 and result.metrics["glue"] == result.metrics["sst2"]
    saved = read_result(run / "results" / "glue.json")
    assert saved.details["sst2"]["metrics"]["accuracy"]["values"] == [result.metrics["sst2"] / 100]
    assert saved.settings["lr"] == 3e-3 and saved.settings["batch_size"] == 16
    info = json.loads((run / "finetuned" / "sst2" / "task.json").read_text())
    assert info["label_names"] == ["negative", "positive"] and info["seed"] == 0
    weights = load_weights(run / "finetuned" / "sst2" / "model.safetensors")
    assert weights["classifier.weight"].shape == (2, 32)
    console = Console(record=True, width=160)
    console.print(glue_table(result))
    text = console.export_text()
    assert "sst2" in text and "GLUE" in text and f"{result.metrics['sst2']:.1f} ± 0.0" in text


def test_two_seeds_report_mean_and_std(tmp_path, glue_fixture):
    run = make_run_dir(tmp_path / "run")
    result = evaluate_glue(run, glue_fixture, ["sst2"], seeds=[1, 2], max_train_examples=32,
                           overrides={"epochs": 1}, progress=False)
    stats = result.details["sst2"]["metrics"]["accuracy"]
    assert len(stats["values"]) == 2 and stats["mean"] == pytest.approx(np.mean(stats["values"]))
    assert stats["std"] == pytest.approx(np.std(stats["values"]))
    assert result.details["sst2"]["train_examples"] == 32


def test_decoder_is_refused(tmp_path, glue_fixture):
    with pytest.raises(CramlmError, match="needs an encoder"):
        evaluate_glue(make_run_dir(tmp_path / "run", "decoder"), glue_fixture, "sst2", progress=False)


def test_pair_encoding_truncates_the_longer_text_first(tmp_path):
    tok = train_tokenizer([" ".join(WORDS)] * 5, vocab_size=100)
    split = Split([(" ".join(["cat"] * 30), "dog dog")], np.array([0]))
    (ids,) = encode(tok, split, 16)
    cat, dog = tok.token_to_id("cat"), tok.token_to_id("dog")
    assert ids == [2, *[cat] * 11, 3, dog, dog, 3] and len(ids) == 16


def test_length_sorted_batches_cover_every_example_once():
    lengths = np.random.default_rng(0).integers(3, 60, 1000)
    for rng in (None, np.random.default_rng(1)):
        batches = length_sorted_batches(lengths, 16, rng)
        assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
        spread = np.mean([np.ptp(lengths[b]) for b in batches])
        assert spread < 10  # sorted within chunks: far less padding than random batches (~50)


def test_progress_in_a_log_file_is_a_line_with_the_time_left():
    """Under nohup a live bar cannot draw: the progress becomes log lines with the steps done and the time left."""
    from io import StringIO

    from cramlm.eval.progress import GlueProgress

    buf = StringIO()
    with GlueProgress(Console(file=buf, width=200), total_steps=6, every_s=0) as progress:
        progress.begin("rte seed 0", 3)
        for step in range(1, 4):
            progress.step(step, 0.5)
        progress.end()
    lines = buf.getvalue().strip().splitlines()
    assert len(lines) == 3 and "rte seed 0: step 2/3, loss 0.500 | all tasks: step 2/6" in lines[1]
    assert all("left" in line for line in lines)
