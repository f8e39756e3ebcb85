"""`cramlm train` refuses what it cannot finish before it writes anything, never loses the weights at the end, and
exits non-zero when a signal stopped it."""

import hashlib
import os
import signal

import pytest

from cramlm.config import DataConfig
from cramlm.data.prepare import prepare
from cramlm.train import trainer as trainer_mod
from cramlm.train.logging import read_metrics
from test_train_trainer import TINY, Poisoned, tiny_cfg

TRAIN = ["--model", "tiny", "--recipe", "demo", *TINY]


def snapshot(root):
    """Every file and dir under `root` with the sha256 of its bytes: equal snapshots mean an untouched tree."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def one_line_error(code, err, *words):
    return code == 2 and len(err.strip().splitlines()) == 1 and all(w in err for w in words)


@pytest.fixture(scope="module")
def datasets(tiny_dataset, tmp_path_factory):
    """The tiny corpus prepared again: another tokenizer of the same vocabulary size (cased), another vocabulary
    size (byte-level BPE), and no validation split."""
    root = tmp_path_factory.mktemp("other-data")
    corpus = tiny_dataset.parent / "corpus.txt"
    base = dict(seq_len=32, vocab_size=128, val_fraction=0.1, min_chars=0, max_tokens_per_char_z=None)
    out = {}
    for name, changes in (("cased", {"lowercase": False}), ("bpe", {"tokenizer": "bpe"}),
                          ("no-val", {"val_fraction": 0.0})):
        prepare([str(corpus)], root / name, DataConfig(**{**base, **changes}), progress=False)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    from cramlm.train.trainer import train

    path = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_cfg("budget.limit=4steps"), tiny_dataset, path, progress=False)
    return path


@pytest.mark.parametrize("data,words", [("cased", ["another tokenizer"]), ("bpe", ["another tokenizer"])])
def test_resume_on_another_tokenizer_changes_nothing(cli, run, datasets, data, words):
    before = snapshot(run)
    code, _, err = cli("train", datasets[data], "--resume", run, "--budget", "8steps")
    assert one_line_error(code, err, *words), err
    assert snapshot(run) == before


def test_resume_with_another_model_changes_nothing(cli, run, tiny_dataset):
    before = snapshot(run)
    code, _, err = cli("train", tiny_dataset, "--resume", run, "--budget", "8steps", "model.n_layers=3")
    assert one_line_error(code, err, "model.n_layers 3 (the run has 2)"), err
    code, _, err = cli("train", tiny_dataset, "--resume", run, "train.optimizer=muon")
    assert one_line_error(code, err, "train.optimizer muon (the run has adamw)"), err
    assert snapshot(run) == before


@pytest.mark.parametrize("option", [["--model", "tiny"], ["--recipe", "demo"], ["--config", "x.yaml"],
                                    ["--objective", "causal"]])
def test_resume_refuses_options_it_would_ignore(cli, run, option):
    before = snapshot(run)
    code, _, err = cli("train", "--resume", run, *option)
    assert one_line_error(code, err, option[0], "--resume"), err
    assert snapshot(run) == before


def test_a_torch_loading_error_is_one_line(run, tiny_dataset):
    """State that does not fit the model (here: a wider one) is refused in one line, not with DCP's traceback."""
    from cramlm.data.store import Dataset
    from cramlm.errors import CramlmError
    from cramlm.models.registry import build_model
    from cramlm.train import checkpoint as ckpt

    cfg = trainer_mod.with_dataset_shape(tiny_cfg("model.d_model=64"), Dataset(tiny_dataset))
    with pytest.raises(CramlmError, match="cannot load .*step-4: .*Size mismatch"):
        ckpt.read_state(ckpt.latest_checkpoint(run), build_model(cfg.model))


@pytest.mark.parametrize("inside", [False, True])
def test_out_in_the_dataset_dir_is_refused(cli, datasets, inside):
    data = datasets["cased"]
    before = snapshot(data)
    code, _, err = cli("train", data, "--out", data / "run" if inside else data, "--budget", "2steps", *TRAIN)
    assert one_line_error(code, err, "dataset dir"), err
    assert snapshot(data) == before


def test_no_validation_split_is_refused_before_the_first_step(cli, datasets, tmp_path):
    data = datasets["no-val"]
    before = snapshot(data)
    code, _, err = cli("train", data, "--out", tmp_path / "run", "--budget", "2steps", *TRAIN)
    assert one_line_error(code, err, "no validation sequences", "--val-fraction"), err
    assert not (tmp_path / "run").exists() and snapshot(data) == before


def test_a_failing_final_evaluation_still_writes_final(tiny_dataset, tmp_path, monkeypatch):
    def broken(self):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(trainer_mod.Trainer, "validate", broken)
    res = trainer_mod.train(tiny_cfg("budget.limit=3steps"), tiny_dataset, tmp_path / "run", progress=False)
    assert res["status"] == "completed" and res["val_loss"] is None
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "results" / "train.json").is_file()
    failed = [r for r in read_metrics(tmp_path / "run") if r.get("event") == "val_failed"]
    assert failed and "out of memory" in failed[0]["error"]


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_with_a_nonzero_code_and_one_message(cli, tiny_dataset, tmp_path, monkeypatch, signum, code):
    build = trainer_mod.build_model

    class Signals(Poisoned):
        def forward(self, **batch):
            if self.calls + 1 in self.bad_calls:
                os.kill(os.getpid(), signum)
            return super().forward(**batch)

    monkeypatch.setattr(trainer_mod, "build_model", lambda cfg: Signals(build(cfg), {3}, 1.0))
    run = tmp_path / "run"
    got, out, err = cli("train", tiny_dataset, "--out", run, "--budget", "20steps", *TRAIN,
                        "train.batch_ramp=none", "train.batch_size=4")
    assert got == code, err
    assert (out + err).count(f"--resume {run}") == 1
    assert (run / "checkpoints" / "step-3").is_dir() and not (run / "final").exists()


def test_tokenizer_fingerprint_is_content_not_bytes(tiny_dataset, datasets, tmp_path):
    """A run's tokenizer and its HF export (another JSON layout and post-processor) tokenize alike: same
    fingerprint; the cased tokenizer of the same vocabulary size does not."""
    from cramlm.config import resolve_config
    from cramlm.data.store import Dataset
    from cramlm.export.hf import export_model
    from cramlm.models.registry import build_model
    from cramlm.train.preflight import tokenizer_fingerprint

    tokenizer = tiny_dataset / "tokenizer.json"
    cfg = trainer_mod.with_dataset_shape(resolve_config(model="bert-crammed", overrides=[
        "model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.d_ff=64"]), Dataset(tiny_dataset)).model
    export_model(build_model(cfg), cfg, tmp_path / "hf", tokenizer)
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() != tokenizer.read_bytes()
    assert tokenizer_fingerprint(tmp_path / "hf" / "tokenizer.json") == tokenizer_fingerprint(tokenizer)
    assert tokenizer_fingerprint(datasets["cased"] / "tokenizer.json") != tokenizer_fingerprint(tokenizer)
