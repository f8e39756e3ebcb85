"""The KV cache and the generation engine: cached logits equal full-forward logits, batched generation equals a
plain one-prompt-at-a-time loop, sampling is reproducible by seed."""

import pytest
import torch

from cramlm.config import resolve_config
from cramlm.errors import CramlmError
from cramlm.generation import SamplingConfig, generate
from cramlm.generation.sampling import penalise
from cramlm.models import build_model
from cramlm.models.kv_cache import KVCache

TINY = {"n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64, "vocab_size": 97, "max_seq_len": 24, "dropout": 0.0}
VARIANTS = {
    "llama": {},
    "mup": {"parametrization": "mup", "base_width": 16},
    "learned-positions": {"positions": "learned"},
    "post-norm-gelu": {"norm_position": "post", "ffn": "gelu", "norm": "layernorm", "bias": True},
    # capacity 2x the tokens: no expert overflows, so routing a token alone or in a batch is the same
    "moe": {"moe.n_experts": 4, "moe.top_k": 2, "moe.capacity_factor": 4.0},
}


def decoder(**kw):
    cfg = resolve_config(model="gpt-small", overrides=[f"model.{k}={v}" for k, v in {**TINY, **kw}.items()]).model
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # spread the logits, so greedy choices are far from ties
        model.embed.tok.weight.mul_(10)
    return model


def rows(lengths, vocab=97, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, vocab, (n,), generator=g).tolist() for n in lengths]


def left_padded(prompts, pad=0):
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    return ids, mask


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_logits_equal_full_forward_with_left_padding(variant):
    model = decoder(**VARIANTS[variant])
    prompts = rows([9, 5, 14])
    ids, mask = left_padded(prompts)
    width = ids.shape[1]
    cache = KVCache.for_model(model, 3, width)
    with torch.no_grad():
        # a prefix of 6 columns (rows 0 and 1 are still all padding there), then one column at a time
        chunks = [model(ids[:, :6], attention_mask=mask[:, :6], cache=cache).logits]
        chunks += [model(ids[:, t:t + 1], attention_mask=mask[:, t:t + 1], cache=cache).logits
                   for t in range(6, width)]
        cached = torch.cat(chunks, dim=1)
        for r, p in enumerate(prompts):
            alone = model(torch.tensor([p])).logits[0]
            torch.testing.assert_close(cached[r, width - len(p):], alone, rtol=0, atol=1e-5)
    assert cache.length == width and cache.next_position.tolist() == [9, 5, 14]


@pytest.mark.parametrize("variant", ["llama", "moe"])
def test_cached_logits_equal_full_forward_without_padding(variant):
    model = decoder(**VARIANTS[variant])
    ids = torch.tensor(rows([16, 16]))
    cache = KVCache.for_model(model, 2, 16)
    with torch.no_grad():
        full = model(ids).logits
        prefix = model(ids[:, :10], cache=cache).logits
        steps = [model(ids[:, t:t + 1], cache=cache).logits for t in range(10, 14)]
        chunk = model(ids[:, 14:], cache=cache).logits  # several tokens after a prefix: explicit causal mask
    torch.testing.assert_close(torch.cat([prefix, *steps, chunk], dim=1), full, rtol=0, atol=1e-5)


def test_cache_refuses_overflow():
    model = decoder()
    with pytest.raises(CramlmError, match="max_seq_len=24"):
        KVCache.for_model(model, 1, 25)
    cache = KVCache.for_model(model, 1, 4)
    with pytest.raises(CramlmError, match="holds 4 tokens"):
        model(torch.tensor([[5, 6, 7, 8, 9]]), cache=cache)


def reference(model, prompt, steps, eos=None, penalty=1.0):
    """Greedy decoding without a cache: the whole sequence through the plain forward at every step."""
    seq, out = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([seq])).logits[:, -1].float()
            if penalty != 1.0:
                seen = torch.zeros_like(logits, dtype=torch.bool)
                seen[0, seq] = True
                logits = penalise(logits, seen, penalty)
            token = int(logits.argmax())
            if token == eos:
                break
            out.append(token)
            seq.append(token)
    return out


@pytest.mark.parametrize("variant", ["llama", "mup", "moe"])
def test_batched_greedy_equals_one_prompt_at_a_time(variant):
    model = decoder(**VARIANTS[variant])
    prompts = rows([3, 11, 1, 7, 5])
    got = generate(model, prompts, SamplingConfig(max_new_tokens=10), eos_id=None, pad_id=0, batch_size=2)
    assert got == [reference(model, p, 10) for p in prompts]
    penalised = generate(model, prompts, SamplingConfig(max_new_tokens=10, repetition_penalty=3.0), eos_id=None,
                         pad_id=0, batch_size=3)
    assert penalised == [reference(model, p, 10, penalty=3.0) for p in prompts]
    assert penalised != got  # the penalty changed something


def test_eos_stops_a_row_and_is_left_out():
    model = decoder()
    prompts = rows([4, 6])
    free = generate(model, prompts, SamplingConfig(max_new_tokens=8), eos_id=None, pad_id=0)
    eos = free[0][3]
    stopped = generate(model, prompts, SamplingConfig(max_new_tokens=8), eos_id=eos, pad_id=0)
    assert stopped[0] == free[0][:free[0].index(eos)]
    assert stopped[1] == (free[1][:free[1].index(eos)] if eos in free[1] else free[1])


def test_sampling_reproducible_by_seed_and_independent_of_batching():
    model = decoder()
    prompts = rows([4, 9, 2, 6])

    def sample(seed, batch_size=16, **kw):
        cfg = SamplingConfig(max_new_tokens=12, temperature=1.5, seed=seed, **kw)
        return generate(model, prompts, cfg, eos_id=None, pad_id=0, batch_size=batch_size)

    first = sample(1)
    assert sample(1) == first
    assert sample(1, batch_size=1) == first  # each prompt draws from its own generator
    assert sample(2) != first
    greedy = generate(model, prompts, SamplingConfig(max_new_tokens=12), eos_id=None, pad_id=0)
    assert first != greedy
    assert sample(3, top_k=1) == greedy
    assert sample(4, top_p=1e-6) == greedy  # the nucleus holds the top token alone
    narrow = sample(5, top_k=3)
    assert narrow != greedy


def test_top_k_and_top_p_only_draw_from_the_kept_tokens():
    from cramlm.generation.sampling import choose

    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(400, 1)
    gens = [torch.Generator().manual_seed(i) for i in range(400)]
    topk = choose(logits, SamplingConfig(temperature=1.0, top_k=2), gens)
    assert set(topk.tolist()) == {0, 1}
    # softmax: 0.636, 0.234, 0.086, ...: 0.636 + 0.234 >= 0.8 so the nucleus is the first two tokens
    topp = choose(logits, SamplingConfig(temperature=1.0, top_p=0.8), gens)
    assert set(topp.tolist()) == {0, 1}
    free = choose(logits, SamplingConfig(temperature=1.0), gens)
    assert set(free.tolist()) == {0, 1, 2, 3, 4}
    share = (free == 0).float().mean().item()
    assert abs(share - 0.636) < 0.08


def test_long_prompts_keep_their_latest_tokens():
    model = decoder()
    long = rows([30])[0]  # max_seq_len 24: 24 - 5 + 1 = 20 tokens of room
    cfg = SamplingConfig(max_new_tokens=5)
    assert generate(model, [long], cfg, eos_id=None, pad_id=0) == [reference(model, long[-20:], 5)]


@pytest.mark.parametrize("call,message", [
    (lambda m: generate(m, [], SamplingConfig(), eos_id=None, pad_id=0), "no prompts"),
    (lambda m: generate(m, [[5], []], SamplingConfig(), eos_id=None, pad_id=0), "prompt 1 has no tokens"),
    (lambda m: generate(m, [[5, 97]], SamplingConfig(), eos_id=None, pad_id=0), "outside the vocabulary"),
    (lambda m: generate(m, [[5]], SamplingConfig(max_new_tokens=25), eos_id=None, pad_id=0), "no room"),
    (lambda m: generate(m, [[5]], SamplingConfig(stop_strings=("x",)), eos_id=None, pad_id=0), "tokenizer"),
    (lambda m: SamplingConfig(top_p=0), "top_p"),
    (lambda m: SamplingConfig(temperature=-1), "temperature"),
    (lambda m: SamplingConfig(max_new_tokens=0), "max_new_tokens"),
])
def test_bad_input_is_refused_in_one_line(call, message):
    with pytest.raises(CramlmError, match=message):
        call(decoder())


def test_encoder_is_refused():
    cfg = resolve_config(model="bert-crammed", overrides=[f"model.{k}={v}" for k, v in TINY.items()]).model
    with pytest.raises(CramlmError, match="fill-mask"):
        generate(build_model(cfg), [[5, 6]], SamplingConfig(), eos_id=None, pad_id=0)
