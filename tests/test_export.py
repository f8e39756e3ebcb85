import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from cramlm.config import RunConfig, resolve_config
from cramlm.data.tokenizer import save_tokenizer, train_tokenizer
from cramlm.errors import CramlmError
from cramlm.export.hf import export_model, import_model, target_for
from cramlm.models import EncoderForSequenceClassification, build_model
from cramlm.train.checkpoint import save_final

TINY = {"n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64, "vocab_size": 97, "max_seq_len": 16}


def small(preset, **kw):
    kv = {**TINY, **kw}
    return resolve_config(model=preset, overrides=[f"model.{k}={v}" for k, v in kv.items()])


def randomised(model):
    """Norm gains and biases away from 1/0, so a mapping that dropped one would show."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def inputs(L=16):
    ids = torch.randint(5, 97, (3, L), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 11:] = 0
    return ids, mask


@pytest.mark.parametrize("preset,kw,auto,arch", [
    ("bert-crammed", {}, AutoModelForMaskedLM, "ModernBertForMaskedLM"),
    ("bert-crammed", {"bias": True, "ffn": "swiglu"}, AutoModelForMaskedLM, "ModernBertForMaskedLM"),
    ("bert-original", {}, AutoModelForMaskedLM, "BertForMaskedLM"),
    ("bert-original", {"bias": False, "positions": "sinusoidal"}, AutoModelForMaskedLM, "BertForMaskedLM"),
    ("gpt-small", {}, AutoModelForCausalLM, "LlamaForCausalLM"),
    ("bert-crammed", {}, AutoModelForSequenceClassification, "ModernBertForSequenceClassification"),
])
def test_export_matches_transformers_and_imports_back(tmp_path, preset, kw, auto, arch):
    cfg = small(preset, **kw).model
    clf = auto is AutoModelForSequenceClassification
    model = randomised(EncoderForSequenceClassification(cfg, 3) if clf else build_model(cfg))
    assert export_model(model, cfg, tmp_path) == arch
    hf = auto.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == arch
    ids, mask = inputs()
    keep = slice(None) if clf else mask.bool()
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits[keep]
        theirs = hf(input_ids=ids, attention_mask=mask).logits[keep]
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
        fresh = auto.from_config(hf.config).eval()(input_ids=ids, attention_mask=mask).logits[keep]
        assert (fresh - ours).abs().max() > 1e-2  # the weights, not the architecture alone, make the match
        back, back_cfg = import_model(tmp_path)
        torch.testing.assert_close(back(ids, attention_mask=mask).logits[keep], ours, rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset,kw,reason", [
    ("bert-crammed", {"positions": "sinusoidal"}, "model.positions=rotary"),
    ("bert-crammed", {"ffn": "gelu"}, "model.ffn=geglu or swiglu"),
    ("gpt-small", {"norm": "layernorm"}, "model.norm=rmsnorm"),
    ("bert-crammed-moe", {}, "mixture-of-experts"),
])
def test_configs_without_an_exact_match_are_refused(tmp_path, preset, kw, reason):
    cfg = small(preset, **kw).model
    with pytest.raises(CramlmError, match=re.escape(reason)):
        export_model(build_model(cfg), cfg, tmp_path)
    assert not any(tmp_path.iterdir())


def test_bert_classifier_is_refused_with_a_reason():
    with pytest.raises(CramlmError, match="head differs"):
        target_for(small("bert-original").model, "classification")


def test_cli_exports_a_run_dir_with_its_tokenizer(tmp_path, cli):
    run_cfg: RunConfig = small("bert-crammed")
    model = randomised(build_model(run_cfg.model))
    run = tmp_path / "run"
    save_final(run, model.state_dict(), run_cfg)
    tok = train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 20 + ["pack my box with jugs"] * 20,
                          vocab_size=90)
    save_tokenizer(tok, run / "tokenizer.json")

    code, out, err = cli("export", run, "--to", tmp_path / "hf")
    assert code == 0, err
    assert "ModernBertForMaskedLM + tokenizer" in out
    assert float(re.search(r"= ([0-9.e+-]+)", out).group(1)) < 1e-4

    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok.mask_token_id == 4 and hf_tok.pad_token_id == 0
    assert hf_tok.model_input_names == ["input_ids", "attention_mask"]  # ModernBERT takes no token types
    enc = hf_tok(["the lazy fox [MASK] over", "pack my box"], padding=True, return_tensors="pt")
    assert enc["input_ids"].tolist()[0] == tok.encode("the lazy fox [MASK] over").ids
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        keep = enc["attention_mask"].bool()
        ours = model(enc["input_ids"], attention_mask=enc["attention_mask"]).logits[keep]
        theirs = hf(**enc).logits[keep]
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)

    code, _, err = cli("export", run, "--to", tmp_path / "hf")
    assert code == 2 and "not empty" in err


def test_cli_refuses_a_model_it_cannot_map(tmp_path, cli):
    run_cfg = small("bert-crammed-moe")
    save_final(tmp_path / "run", build_model(run_cfg.model).state_dict(), run_cfg)
    code, out, err = cli("export", tmp_path / "run", "--to", tmp_path / "hf")
    assert code == 2 and "mixture-of-experts" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "hf").exists()
