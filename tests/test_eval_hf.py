"""Our perplexity of an exported model equals a direct transformers computation on the same text and windows."""

import json
import math

import pytest
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
    assert json.loads(out)["details"]["sst2"]["dev_examples"] == 2 * len(WORDS)
    assert (tmp_path / "hf" / "finetuned" / "sst2" / "task.json").is_file()
    code, out, err = cli("eval", "fill-mask", tmp_path / "hf", "the [MASK] sat")
    assert code == 0 and out.startswith("[MASK] 1:"), err
