"""`cramlm finetune`: response-only loss, exact resume, a synthetic task learned, exports, refused inputs."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cramlm.config import resolve_config
from cramlm.data.loader import IGNORE
from cramlm.data.tokenizer import PAD_ID, SEP_ID, load_tokenizer
from cramlm.finetune.data import PairData, PairLoader
from cramlm.finetune.pairs import pair_ids, prompt_ids
from cramlm.finetune.run import finetune
from cramlm.train import checkpoint as ckpt
from cramlm.train.logging import read_metrics
from cramlm.train.trainer import train

from conftest import WORDS

TINY = ["model.n_layers=2", "model.d_model=64", "model.n_heads=4", "model.d_ff=128", "train.batch_size=16",
        "train.micro_batch_size=8", "budget.hardware=cpu", "train.log_every=1", "train.val_batches=2"]
VOCAB = WORDS[:8]  # 8 words, 512 three-word lists


@pytest.fixture(scope="module")
def source(tiny_dataset, tmp_path_factory):
    """A tiny causal decoder run dir (a few pretraining steps on the tiny corpus)."""
    run = tmp_path_factory.mktemp("src") / "run"
    train(resolve_config(model="gpt-small", recipe="demo", overrides=TINY + ["budget.limit=4steps"]), tiny_dataset,
          run, progress=False)
    return run


@pytest.fixture(scope="module")
def encoder_run(tiny_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("enc") / "run"
    train(resolve_config(model="tiny", recipe="demo", overrides=TINY + ["budget.limit=1steps"]), tiny_dataset, run,
          progress=False)
    return run


def reverse_pairs(path: Path) -> Path:
    """The synthetic task: a list of three words -> the same words reversed (a unique answer)."""
    combos = [(a, b, c) for a in VOCAB for b in VOCAB for c in VOCAB]
    random.Random(0).shuffle(combos)
    path.write_text("".join(json.dumps({"prompt": " ".join(x), "response": " ".join(reversed(x))}) + "\n"
                            for x in combos))
    return path


def write_pairs(path: Path, pairs, prompt="prompt", response="response") -> Path:
    path.write_text("".join(json.dumps({prompt: p, response: r}) + "\n" for p, r in pairs))
    return path


def test_layout_and_labels_cover_the_response_only(source, tmp_path):
    tok = load_tokenizer(source / "tokenizer.json")
    ids, n_prompt = pair_ids(tok, "cat sat on", "on sat cat", 32)
    body = tok.encode("cat sat on", add_special_tokens=False).ids
    answer = tok.encode("on sat cat", add_special_tokens=False).ids
    assert ids == [SEP_ID, *body, SEP_ID, *answer, SEP_ID] and n_prompt == len(body) + 2
    assert prompt_ids(tok, "cat sat on") == ids[:n_prompt]
    # a long prompt is cut to make room for the whole response; a response that cannot fit is left out
    cut, n_cut = pair_ids(tok, " ".join(["cat"] * 40), "on sat cat", 12)
    assert len(cut) == 12 and cut[n_cut:] == [*answer, SEP_ID] and cut[n_cut - 1] == SEP_ID
    assert pair_ids(tok, "cat", " ".join(["mat"] * 40), 12) is None

    data = PairData(write_pairs(tmp_path / "p.jsonl", [("cat sat", "sat cat"), ("a mat on the mat", "mat"),
                                                        ("dogs", "ran in parks")]), source / "tokenizer.json",
                    128, 32, val_fraction=0.3)
    assert data.summary()["train"] == 2 and data.summary()["val"] == 1
    loader = PairLoader(data, seed=0)
    batch = loader.next_batch(2)
    for row, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        seps = [i for i, t in enumerate(row) if t == SEP_ID]
        end = seps[2] + 1  # [SEP] prompt [SEP] response [SEP], then padding
        assert all(t == PAD_ID for t in row[end:])
        assert all(x == IGNORE for x in labels[:seps[1] + 1] + labels[end:])
        assert labels[seps[1] + 1:end] == row[seps[1] + 1:end]


def test_prompt_tokens_contribute_no_loss_and_no_gradient(source, tmp_path):
    """Changing a prompt token changes nothing the loss reads directly: the gradient on every logit that predicts a
    prompt or padding token is exactly zero, and the loss is the cross-entropy of the response tokens alone."""
    model, _ = ckpt.load_model(source)
    data = PairData(reverse_pairs(tmp_path / "p.jsonl"), source / "tokenizer.json", 128, 32)
    batch = PairLoader(data, seed=1).next_batch(8)
    out = model(**batch)
    out.logits.retain_grad()
    out.loss.backward()
    grad, labels = out.logits.grad, batch["labels"]
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = labels[:, 1:] != IGNORE  # the logit at t is scored against the label at t + 1
    assert grad[~predicts].abs().max() == 0
    assert (grad[predicts].abs().sum(-1) > 0).all()
    logits = out.logits.detach()
    manual = torch.nn.functional.cross_entropy(logits[predicts], batch["labels"][:, 1:][labels[:, 1:] != IGNORE])
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-5)


CHILD = """
import sys, torch
torch.set_num_threads(1)
from cramlm.finetune.run import finetune
finetune(sys.argv[1], sys.argv[2], sys.argv[3], overrides=sys.argv[4:], progress=False)
"""


def test_sigkill_then_resume_is_bit_identical(source, tmp_path):
    pairs = reverse_pairs(tmp_path / "pairs.jsonl")
    overrides = ["budget.limit=24steps", "train.checkpoint_every=3steps", "train.batch_size=16",
                 "train.micro_batch_size=8", "train.log_every=1", "model.dropout=0.1"]
    finetune(source, pairs, tmp_path / "ref", overrides=overrides, progress=False)

    kill_at = random.Random().randint(4, 18)
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(source), str(pairs), str(run), *overrides], env=env)
    try:
        while child.poll() is None:
            steps = [r.get("step", 0) for r in read_metrics(run)]
            if steps and max(steps) >= kill_at:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        child.wait(timeout=60)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGKILL, f"the run ended before step {kill_at}"
    assert not (run / "final").exists()

    res = finetune(None, None, run, resume=True, progress=False)
    assert res["steps"] == 24
    ref, got = (ckpt.load_weights(r / "final" / "model.safetensors") for r in (tmp_path / "ref", run))
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), name
    assert any(r.get("event") == "resume" for r in read_metrics(run))


def test_tiny_decoder_learns_to_reverse_word_lists(source, tmp_path, cli):
    """400 steps (~30 s on one CPU thread) from a barely pretrained decoder: >= 90% exact match, greedy, on the
    held-out lists (never seen in training); the run dir is read by generation, eval and export."""
    from cramlm.generation import SamplingConfig, generate, load_decoder

    pairs = reverse_pairs(tmp_path / "pairs.jsonl")
    code, out, err = cli("finetune", source, "--data", pairs, "--out", tmp_path / "ft", "--budget", "400steps",
                         "--val-fraction", "0.2", "train.lr=3e-3", "train.micro_batch_size=32")
    assert code == 0, err
    assert "400 steps" in out and "held-out response loss" in out
    meta = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert meta["split"]["val"] == 102 and meta["layout"] == "[SEP] prompt [SEP] response [SEP]"

    model, tok = load_decoder(tmp_path / "ft")
    data = PairData(pairs, tmp_path / "ft" / "tokenizer.json", model.cfg.vocab_size, model.cfg.max_seq_len,
                    val_fraction=0.2)
    prompts, answers = [], []
    for row, labels in zip(data.sequences("val"), data._splits["val"][1]):
        start = int(np.argmax(labels != IGNORE))
        end = int(np.flatnonzero(labels != IGNORE)[-1])  # the closing [SEP]
        prompts.append(row[:start].tolist())
        answers.append(row[start:end].tolist())
    new = generate(model, prompts, SamplingConfig(max_new_tokens=8), eos_id=SEP_ID, pad_id=PAD_ID)
    exact = float(np.mean([a == b for a, b in zip(new, answers)]))
    assert exact >= 0.9, exact

    code, _, err = cli("export", tmp_path / "ft", "--to", tmp_path / "hf")
    assert code == 0, err
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids).logits, atol=1e-4)


def test_bad_inputs_are_one_line_errors_and_write_nothing(source, encoder_run, tmp_path, cli):
    out = tmp_path / "out"
    good = write_pairs(tmp_path / "good.jsonl", [("cat", "tac"), ("dog", "god"), ("sun", "nus")])
    cases = [
        (["--data", write_pairs(tmp_path / "q.jsonl", [("a", "b"), ("c", "d")], prompt="question")],
         "has no 'prompt' field"),
        (["--data", write_pairs(tmp_path / "one.jsonl", [("a", "b")])], "needs at least 2"),
        (["--data", tmp_path / "missing.jsonl"], "does not exist"),
        (["--data", good, "model.n_layers=3"], "drop the overrides of model.n_layers"),
        (["--data", good, "--val-fraction", "1.5"], "--val-fraction"),
    ]
    (tmp_path / "empty.jsonl").write_text("\n\n")
    cases.append((["--data", tmp_path / "empty.jsonl"], "holds no examples"))
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": \n')
    cases.append((["--data", tmp_path / "bad.jsonl"], "line 2 is not JSON"))
    for args, message in cases:
        code, _, err = cli("finetune", source, *args, "--out", out)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    code, _, err = cli("finetune", encoder_run, "--data", good, "--out", out)
    assert code == 2 and "is an encoder" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = cli("finetune", "--resume", source)
    assert code == 2 and "not a fine-tuned run" in err, err
    assert not out.exists()
