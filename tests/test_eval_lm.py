import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cramlm.config import resolve_config
from cramlm.data.tokenizer import train_tokenizer
from cramlm.errors import CramlmError
from cramlm.eval.lm import SEP, lambada, perplexity, pseudo_nll, read_lambada, sliding_nll, split_last_word, windows
from cramlm.models.registry import build_model

TEXT = "the cat sat on the mat and the dog ran under the big red table near the small blue house " * 3


def tiny(arch, vocab=100, max_len=32):
    torch.manual_seed(0)
    cfg = resolve_config(model="tiny", overrides=[
        f"model.arch={arch}", "model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.d_ff=64",
        f"model.vocab_size={vocab}", f"model.max_seq_len={max_len}"])
    return build_model(cfg.model).eval()


@pytest.mark.parametrize("n,window,stride", [(50, 16, 15), (50, 16, 5), (10, 16, 4), (33, 8, 1)])
def test_windows_score_every_token_once(n, window, stride):
    scored = []
    for begin, end, first in windows(n, window, stride):
        assert end - begin <= window and first > begin and (first - begin >= window - stride or begin == 0)
        scored += range(first, end)
    assert scored == list(range(1, n))


def test_sliding_nll_matches_brute_force_context():
    model = tiny("decoder")
    ids = [SEP, *torch.randint(5, 100, (40,)).tolist()]
    with torch.no_grad():
        full = model(torch.tensor([ids[:16]]), labels=torch.tensor([ids[:16]])).loss.item() * 15
        assert sliding_nll(model, ids[:16], 16, 7)[0] == pytest.approx(full, rel=1e-5)
        brute = 0.0
        for t in range(1, len(ids)):  # stride 1: token t sees the window - 1 tokens before it
            context = torch.tensor([ids[max(0, t - 15):t + 1]])
            brute += F.cross_entropy(model(context).logits[0, -2], torch.tensor(ids[t])).item()
    nll, count = sliding_nll(model, ids, 16, 1, batch_size=5)
    assert count == len(ids) - 1 and nll == pytest.approx(brute, rel=1e-5)


def test_pseudo_nll_matches_masking_one_token_at_a_time():
    model = tiny("encoder")
    ids = torch.randint(5, 100, (12,)).tolist()
    brute = 0.0
    with torch.no_grad():
        for start in (0, 6):  # window 8 -> chunks of 6 tokens
            piece = [2, *ids[start:start + 6], 3]
            for t in range(1, 7):
                masked = list(piece)
                masked[t] = 4
                brute += F.cross_entropy(model(torch.tensor([masked])).logits[0, t], torch.tensor(piece[t])).item()
    nll, count = pseudo_nll(model, ids, 8, batch_size=5)
    assert count == 12 and nll == pytest.approx(brute, rel=1e-5)


def test_perplexity_reports_tokens_and_words():
    tok = train_tokenizer([TEXT] * 5, vocab_size=100)
    result = perplexity(tiny("decoder", tok.get_vocab_size()), tok, TEXT, window=32, stride=16)
    assert result["words"] == len(TEXT.split()) and result["tokens"] == len(tok.encode(TEXT).ids)
    assert result["word_ppl"] == pytest.approx(math.exp(result["nll"] / result["words"]))
    assert result["token_ppl"] == pytest.approx(math.exp(result["nll"] / result["tokens"]))
    short = perplexity(tiny("encoder", tok.get_vocab_size()), tok, TEXT, window=32, max_tokens=10)
    assert short["kind"] == "pseudo-perplexity" and short["tokens"] == 10 and short["pseudo_word_ppl"] is None
    assert "token_ppl" not in short and short["pseudo_token_ppl"] > 1  # not comparable with a causal model's
    with pytest.raises(CramlmError, match="stride"):
        perplexity(tiny("decoder", tok.get_vocab_size()), tok, TEXT, window=32, stride=32)
    with pytest.raises(CramlmError, match="--stride is for causal models"):
        perplexity(tiny("encoder", tok.get_vocab_size()), tok, TEXT, window=32, stride=16)


class Bigram(nn.Module):
    """A causal test model with known answers: it predicts `table[token]` after each token, with logit 5."""

    def __init__(self, table, vocab):
        super().__init__()
        self.cfg = SimpleNamespace(arch="decoder")
        self.table, self.vocab = table, vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        nxt = torch.tensor([[self.table.get(int(t), 0) for t in row] for row in input_ids])
        return SimpleNamespace(logits=5.0 * F.one_hot(nxt, self.vocab).float())


def test_lambada_whole_multi_token_word_must_match(tmp_path):
    tok = train_tokenizer(["the cat sat on the mat with a dog zebu brash offish"] * 5, vocab_size=80)
    right, wrong = "the cat sat on the mat with a zebra", "a dog sat on the cat with a zebrafish"
    ctx, word = split_last_word(tok, right)
    assert len(word) > 1 and tok.decode(ctx + word) == right  # "zebra" is several word pieces
    table = dict(zip(ctx[-1:] + word[:-1], word))  # knows how "zebra" continues, never how "zebrafish" ends
    wrong_ctx, wrong_word = split_last_word(tok, wrong)
    wrong_hits = sum(table.get(a) == b for a, b in zip(wrong_ctx[-1:] + wrong_word[:-1], wrong_word))
    assert 0 < wrong_hits < len(wrong_word)  # a partial match must not count
    path = tmp_path / "lambada.jsonl"
    path.write_text(f'{{"text": "{right}"}}\n{{"text": "{wrong}"}}\n')
    result = lambada(Bigram(table, tok.get_vocab_size()), tok, read_lambada(path), window=64)
    assert result["examples"] == 2 and result["accuracy"] == 0.5
    log_z = math.log(math.exp(5) + tok.get_vocab_size() - 1)  # logits: 5 for the predicted token, 0 elsewhere
    mean_logp = (len(word) * 5 + wrong_hits * 5) / 2 - (len(word) + len(wrong_word)) * log_z / 2
    assert result["ppl"] == pytest.approx(math.exp(-mean_logp), rel=1e-5)


def test_lambada_reader_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"txt": "a b"}\n')
    with pytest.raises(CramlmError, match="'text' field"):
        read_lambada(tmp_path / "bad.jsonl")
    with pytest.raises(CramlmError, match="does not exist"):
        read_lambada(tmp_path / "none.jsonl")


def test_fill_mask_ranks_the_dense_logits_without_special_tokens():
    from cramlm.eval.fill_mask import fill_mask

    tok = train_tokenizer([TEXT] * 5, vocab_size=100)
    model = tiny("encoder", tok.get_vocab_size())
    options = fill_mask(model, tok, "the cat [MASK] on the [MASK]", top_k=4)
    assert len(options) == 2 and all(len(o) == 4 for o in options)
    ids = [2, *tok.encode("the cat [MASK] on the [MASK]", add_special_tokens=False).ids, 3]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]  # no mask_positions: every position
    for position, predicted in zip([i for i, t in enumerate(ids) if t == 4], options):
        row = logits[position].clone()
        row[:5] = float("-inf")
        probs, best = row.softmax(-1).topk(4)
        assert [token for token, _ in predicted] == [tok.id_to_token(int(i)) for i in best]
        assert [p for _, p in predicted] == pytest.approx(probs.tolist(), rel=1e-5)
    with pytest.raises(CramlmError, match="needs an encoder"):
        fill_mask(tiny("decoder", tok.get_vocab_size()), tok, "the [MASK]")
