import pytest
import torch

from cramlm.config import ModelConfig, resolve_config
from cramlm.errors import CramlmError
from cramlm.models import Decoder, Encoder, EncoderForSequenceClassification, build_model

TINY = {"n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64, "vocab_size": 97, "max_seq_len": 16}


def small(preset: str, **overrides) -> ModelConfig:
    kv = {**TINY, "dropout": 0.0, **overrides}
    return resolve_config(model=preset, overrides=[f"model.{k}={v}" for k, v in kv.items()]).model


def batch(cfg: ModelConfig, B: int = 3, L: int = 16, k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, cfg.vocab_size, (B, L), generator=g)
    positions = torch.stack([torch.randperm(L, generator=g)[:k] for _ in range(B)])
    labels = torch.full((B, L), -100)
    labels.scatter_(1, positions, ids.gather(1, positions))
    masked = ids.scatter(1, positions, 4)
    return masked, labels, positions


def test_build_model_picks_the_architecture():
    assert isinstance(build_model(small("bert-crammed")), Encoder)
    assert isinstance(build_model(small("gpt-small")), Decoder)
    assert len(build_model(small("tiny")).blocks) == 2


def test_bad_shapes_are_clear_errors():
    with pytest.raises(CramlmError, match="d_ff"):
        build_model(small("bert-crammed", d_ff=63))
    with pytest.raises(CramlmError, match="max_seq_len=16"):
        build_model(small("bert-crammed"))(torch.zeros(1, 17, dtype=torch.long))


def test_sparse_head_matches_dense_head_on_masked_positions():
    cfg = small("bert-crammed")
    torch.manual_seed(0)
    sparse = build_model(cfg).eval()
    dense = build_model(cfg.model_copy(update={"sparse_head": False})).eval()
    dense.load_state_dict(sparse.state_dict())
    ids, labels, pos = batch(cfg)
    out_s = sparse(ids, labels=labels, mask_positions=pos)
    out_d = dense(ids, labels=labels, mask_positions=pos)
    assert out_s.logits.shape == (3, 4, cfg.vocab_size) and out_d.logits.shape == (3, 16, cfg.vocab_size)
    gathered = out_d.logits.gather(1, pos[..., None].expand(-1, -1, cfg.vocab_size))
    torch.testing.assert_close(out_s.logits, gathered)
    torch.testing.assert_close(out_s.loss, out_d.loss)
    expected = torch.nn.functional.cross_entropy(gathered.reshape(-1, cfg.vocab_size), labels.gather(1, pos).reshape(-1))
    torch.testing.assert_close(out_s.loss, expected)


def test_sparse_head_ignores_positions_labelled_minus_100():
    cfg = small("bert-crammed")
    model = build_model(cfg).eval()
    ids, labels, pos = batch(cfg)
    labels[0, pos[0, 0]] = -100  # that position is gathered but must not count
    out = model(ids, labels=labels, mask_positions=pos)
    logits, targets = out.logits.reshape(-1, cfg.vocab_size), labels.gather(1, pos).reshape(-1)
    keep = targets != -100
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits[keep], targets[keep]))


@pytest.mark.parametrize("overrides", [
    {},
    {"norm_position": "post", "final_norm": False, "bias": True, "positions": "learned", "ffn": "gelu"},
    {"positions": "sinusoidal", "norm": "rmsnorm", "ffn": "swiglu"},
    {"positions": "none", "embedding_norm": False, "head_transform": False, "tie_embeddings": False},
])
def test_encoder_variants_train(overrides):
    cfg = small("bert-crammed", **overrides)
    model = build_model(cfg)
    ids, labels, pos = batch(cfg)
    out = model(ids, labels=labels, mask_positions=pos)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert 3.0 < out.loss.item() < 6.5  # about log(97) = 4.6 at initialisation
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    assert model(ids, labels=labels, mask_positions=pos).loss < out.loss


def test_padding_does_not_leak_into_real_tokens():
    cfg = small("bert-crammed")
    model = build_model(cfg).eval()
    ids, _, _ = batch(cfg, B=2)
    mask = torch.ones_like(ids)
    mask[:, 10:] = 0
    other = ids.clone()
    other[:, 10:] = 7
    a = model(ids, attention_mask=mask).logits[:, :10]
    b = model(other, attention_mask=mask).logits[:, :10]
    torch.testing.assert_close(a, b)
    assert not torch.allclose(model(ids).logits[:, :10], a)  # the mask did something


def test_classifier_and_regressor():
    cfg = small("bert-crammed")
    ids, _, _ = batch(cfg)
    mask = torch.ones_like(ids)
    mask[0, 12:] = 0
    clf = EncoderForSequenceClassification(cfg, num_labels=3)
    out = clf(ids, attention_mask=mask, labels=torch.tensor([0, 2, 1]))
    assert out.logits.shape == (3, 3) and torch.isfinite(out.loss)
    assert len(clf.blocks) == 2 and clf.blocks is clf.encoder.blocks
    reg = EncoderForSequenceClassification(cfg, num_labels=1)
    target = torch.tensor([0.5, 4.0, 2.5])
    out = reg(ids, labels=target)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits[:, 0], target))
    out.loss.backward()
    assert reg.encoder.embed.tok.weight.grad is not None


def test_decoder_is_causal_and_shifts_labels():
    cfg = small("gpt-small")
    model = build_model(cfg).eval()
    ids, _, _ = batch(cfg)
    changed = ids.clone()
    changed[:, 9:] = 11
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])
    out = model(ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(a[:, :-1].reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_decoder_padding_mask_matches_unpadded():
    cfg = small("gpt-small")
    model = build_model(cfg).eval()
    ids, _, _ = batch(cfg, B=1)
    mask = torch.ones_like(ids)
    mask[:, 12:] = 0
    torch.testing.assert_close(model(ids, attention_mask=mask).logits[:, :12], model(ids[:, :12]).logits)


def test_generate_greedy_topk_and_eos():
    cfg = small("gpt-small")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    prompt = torch.randint(5, cfg.vocab_size, (2, 5))
    greedy = model.generate(prompt, max_new_tokens=14, temperature=0)
    assert greedy.shape == (2, 19) and torch.equal(greedy[:, :5], prompt)  # runs past max_seq_len=16 by cropping
    manual = model(greedy[:, :7]).logits[:, -1].argmax(-1)
    assert torch.equal(manual, greedy[:, 7])
    top1 = model.generate(prompt, max_new_tokens=6, temperature=1.0, top_k=1)
    assert torch.equal(top1, greedy[:, :11])
    g = torch.Generator().manual_seed(0)
    sampled = model.generate(prompt, max_new_tokens=6, temperature=1.5, top_k=10, generator=g)
    assert sampled.shape == (2, 11) and int(sampled.max()) < cfg.vocab_size
    eos = int(greedy[0, 5])
    stopped = model.generate(prompt[:1], max_new_tokens=6, temperature=0, eos_id=eos)
    assert stopped.shape == (1, 6) and int(stopped[0, -1]) == eos


def test_torch_compile_encoder_and_decoder():
    """Inductor forward must match eager; backward is traced with aot_eager (an inductor backward compile costs
    ~40 s on CPU and exercises the same graph)."""
    for preset in ("bert-crammed", "gpt-small"):
        cfg = small(preset, n_layers=1)
        model = build_model(cfg)
        ids, labels, pos = batch(cfg)
        if cfg.arch == "decoder":
            labels, pos = ids, None
        eager = model(ids, labels=labels, mask_positions=pos)
        compiled = torch.compile(model)(ids, labels=labels, mask_positions=pos)
        torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-4, atol=1e-4)
        traced = torch.compile(model, backend="aot_eager")(ids, labels=labels, mask_positions=pos)
        traced.loss.backward()
        assert model.embed.tok.weight.grad is not None
