"""Our perplexity of an exported model equals a direct transformers computation on the same text and windows."""

import json
import math

import pytest
import safetensors.torch
import torch

from cramlm.config import resolve_config
from cramlm.data.tokenizer import train_tokenizer
from cramlm.export.hf import export_model
from cramlm.models.registry import build_model

transformers = pytest.importorskip("transformers")

TEXT = "the cat sat on the mat and the dog ran under the big red table near the small blue house . " * 6


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    tok = train_tokenizer([TEXT] * 5, vocab_size=120)
    tok.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = resolve_config(model="gpt-small", overrides=[
        "model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.d_ff=64",
        f"model.vocab_size={tok.get_vocab_size()}", "model.max_seq_len=32"]).model
    export_model(build_model(cfg), cfg, root / "export", root / "tokenizer.json")
    return root / "export"


@torch.no_grad()
def hf_sliding_nll(hf_dir, text, window, stride):
    """The transformers recipe: windows of `window` tokens every `stride`, the context part labelled -100."""
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = torch.tensor([[tok.sep_token_id, *tok(text, add_special_tokens=False)["input_ids"]]])
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, ids.shape[1], stride):
        end = min(begin + window, ids.shape[1])
        x = ids[:, begin:end]
        labels = x.clone()
        labels[:, :-(end - prev_end)] = -100
        n = int((labels[:, 1:] != -100).sum())
        total += model(x, labels=labels).loss.item() * n
        count += n
        prev_end = end
        if end == ids.shape[1]:
            break
    return total, count


@pytest.mark.parametrize("stride", [31, 10])
def test_perplexity_equals_transformers(cli, hf_dir, tmp_path, stride):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    code, out, err = cli("eval", "ppl", hf_dir, "--text", text, "--stride", stride, "--json")
    assert code == 0, err
    ours = json.loads(out)
    nll, count = hf_sliding_nll(hf_dir, TEXT, 32, stride)
    assert ours["details"]["tokens"] == count
    assert ours["metrics"]["token_ppl"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert ours["metrics"]["word_ppl"] == pytest.approx(math.exp(nll / len(TEXT.split())), rel=1e-4)


def test_glue_and_fill_mask_read_an_exported_encoder(cli, tmp_path):
    from test_eval_glue import WORDS

    tok = train_tokenizer([" ".join(WORDS + ["good", "bad"])] * 20, vocab_size=120)
    tok.save(str(tmp_path / "tokenizer.json"))
    cfg = resolve_config(model="bert-crammed", overrides=[
        "model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.d_ff=64",
        f"model.vocab_size={tok.get_vocab_size()}", "model.max_seq_len=64"]).model
    export_model(build_model(cfg), cfg, tmp_path / "hf", tmp_path / "tokenizer.json")
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    rows = "".join(f"the {w} cat\t{i % 2}\n" for i, w in enumerate(WORDS * 2))
    for split in ("train", "dev"):
        (glue / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    code, out, err = cli("eval", "glue", tmp_path / "hf", "--glue-dir", tmp_path / "glue", "--tasks", "sst2",
                         "--epochs", "1", "--json")
    assert code == 0, err
    out = out[out.index("{"):]  # DeepSpeed, when installed, may log a line to stdout as transformers probes it
    assert json.loads(out)["details"]["sst2"]["dev_examples"] == 2 * len(WORDS)
    assert (tmp_path / "hf" / "finetuned" / "sst2" / "task.json").is_file()
    code, out, err = cli("eval", "fill-mask", tmp_path / "hf", "the [MASK] sat")
    assert code == 0 and out.startswith("[MASK] 1:"), err


def _eval_json(cli, command, model_dir, *args):
    code, out, err = cli("eval", command, model_dir, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_every_eval_scores_an_export_as_its_run_dir(cli, tmp_path, arch):
    """`cramlm export RUN --to DIR`, then each evaluation of DIR gives the numbers it gives for RUN."""
    from test_eval_glue import make_run_dir

    run = make_run_dir(tmp_path / "run", arch, model="tiny" if arch == "encoder" else "gpt-small")
    code, _, err = cli("export", run, "--to", tmp_path / "hf")
    assert code == 0, err
    text = tmp_path / "text.txt"
    text.write_text(TEXT * 3)
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text('{"text": "the cat sat on the mat"}\n{"text": "the dog ran under the big red table"}\n')
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    for split in ("train", "dev"):
        (glue / f"{split}.tsv").write_text("sentence\tlabel\n" + "the good cat\t1\nthe bad dog\t0\n" * 8)
    commands = {"ppl": ["--text", text, "--max-tokens", "40"], "lambada": ["--data", lambada],
                "mlm": ["--text", text, "--mask-rate", "0.2"]}
    if arch == "encoder":
        commands["glue"] = ["--glue-dir", glue.parent, "--tasks", "sst2", "--epochs", "1", "--lr", "1e-3"]
    for command, args in commands.items():
        ours, exported = (_eval_json(cli, command, d, *args) for d in (run, tmp_path / "hf"))
        assert ours["metrics"] and ours["metrics"].keys() == exported["metrics"].keys(), command
        for key, value in ours["metrics"].items():
            assert exported["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (command, key)
        assert (tmp_path / "hf" / "results" / f"{exported['key']}.json").is_file()


def test_a_finetuned_classifier_is_fine_tuned_again_but_not_scored_as_a_language_model(cli, tmp_path):
    """A classifier (GLUE's finetuned/<task>/ or its HF export) gives GLUE its encoder; the LM evaluations refuse it
    in one line, since its LM head was not trained with its encoder."""
    from cramlm.models.encoder import EncoderForSequenceClassification
    from test_eval_glue import make_run_dir

    run = make_run_dir(tmp_path / "run")
    glue = tmp_path / "glue" / "RTE"
    glue.mkdir(parents=True)
    for split in ("train", "dev"):
        rows = "0\tthe cat sat\tthe cat\tentailment\n1\ta dog ran\tthe mat\tnot_entailment\n" * 4
        (glue / f"{split}.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + rows)
    args = ["--glue-dir", glue.parent, "--tasks", "rte", "--epochs", "1"]
    assert _eval_json(cli, "glue", run, *args)["details"]["rte"]["dev_examples"] == 8
    finetuned = run / "finetuned" / "rte"
    code, out, err = cli("export", finetuned, "--to", tmp_path / "ft_hf")  # the kept classifier exports as is
    assert code == 0, err
    assert "ForSequenceClassification" in out and "max |logit difference| vs cramlm = 0.00e+00" in out
    labels = json.loads((finetuned / "task.json").read_text())["label_names"]
    hf_config = json.loads((tmp_path / "ft_hf" / "config.json").read_text())
    assert [hf_config["id2label"][str(i)] for i in range(len(labels))] == labels
    cfg = resolve_config(model="tiny", overrides=["model.n_layers=1", "model.d_model=32", "model.n_heads=2",
                                                  "model.d_ff=64", "model.vocab_size=120", "model.max_seq_len=64"])
    export_model(EncoderForSequenceClassification(cfg.model, 2), cfg.model, tmp_path / "hf", run / "tokenizer.json")
    for classifier in (finetuned, tmp_path / "hf"):
        assert _eval_json(cli, "glue", classifier, *args)["details"]["rte"]["train_examples"] == 8
        code, _, err = cli("eval", "ppl", classifier, "--text", run / "tokenizer.json")
        assert code == 2 and "holds a fine-tuned sequence classifier; ppl needs" in err
        assert len(err.strip().splitlines()) == 1


WEIGHTS = safetensors.torch.save({"x": torch.zeros(1)})


@pytest.mark.parametrize("files,message", [
    ({}, "is neither a cramlm run dir (config.yaml, final/) nor an exported HF dir"),
    ({"tokenizer.json": "{}"}, "is neither a cramlm run dir"),
    ({"config.json": "{}"}, "has no tokenizer.json"),
    ({"config.json": "{}", "tokenizer.json": "{}", "model.safetensors": WEIGHTS}, "config.json lacks or mistypes"),
    ({"config.json": "{}", "tokenizer.json": "{}", "model.safetensors": ""}, "is not a transformers checkpoint"),
    ({"config.json": "{", "tokenizer.json": "{}"}, "is not a transformers checkpoint"),
])
def test_a_dir_that_is_neither_a_run_nor_an_export_is_one_line(cli, tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    for command, args in (("ppl", ["--text", tmp_path]), ("lambada", ["--data", tmp_path]),
                          ("mlm", ["--text", tmp_path]), ("glue", ["--glue-dir", tmp_path])):
        code, _, err = cli("eval", command, tmp_path, *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (command, err)
