import json
import random

import numpy as np
import pytest
import torch

from cramlm.config import DataConfig
from cramlm.data.loader import IGNORE, BatchLoader
from cramlm.data.prepare import prepare
from cramlm.data.store import Dataset
from cramlm.data.tokenizer import CLS_ID, MASK_ID, SEP_ID
from cramlm.errors import CramlmError

WORDS = ("language model token train text data word mask predict learn budget sentence small large fast slow "
         "the a of to and in is it that for on with as by").split()


def write_corpus(folder, n_docs=400, seed=0):
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))) + "." for _ in range(n_docs)]
    docs += docs[:10]  # exact duplicates
    docs += ["1234 5678 %%%% #### 9999 0000 @@@@ 1111 2222 ++++"] * 1  # mostly not text
    docs += ["tiny"]
    (folder / "corpus.txt").write_text("\n\n".join(docs) + "\n")
    return folder


CFG = DataConfig(vocab_size=200, seq_len=32, val_fraction=0.1, min_chars=8, max_tokens_per_char_z=None)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    src = write_corpus(root / "src")
    prepare([str(src)], root / "ds", CFG, progress=False)
    return root


def test_manifest_counts_and_packing(dataset_dir):
    ds = Dataset(dataset_dir / "ds")
    m = ds.manifest
    assert m["format_version"] == 1 and m["seq_len"] == 32 and m["vocab_size"] == ds.vocab_size <= 200
    assert m["dropped"]["duplicate"] == 10 and m["dropped"]["not_text"] == 1 and m["dropped"]["too_short"] == 1
    assert m["documents"] == 400 == m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"]
    assert 0 < m["splits"]["val"]["documents"] < 100
    train = ds.sequences("train")
    assert train.dtype == np.uint16 and train.shape == (m["splits"]["train"]["sequences"], 32)
    assert (train[:, 0] == CLS_ID).all()
    # every train token is accounted for: document tokens + one [SEP] each = packed body + dropped tail
    s = m["splits"]["train"]
    assert s["tokens"] + s["documents"] == s["sequences"] * 31 + s["dropped_tail_tokens"]
    assert (train[:, 1:] == SEP_ID).sum() in (s["documents"], s["documents"] - 1) or s["dropped_tail_tokens"]
    counts = np.load(dataset_dir / "ds" / "token_counts.npy")
    assert counts.sum() == s["tokens"]


def test_rerun_with_workers_gives_a_byte_identical_dataset(dataset_dir):
    prepare([str(dataset_dir / "src")], dataset_dir / "ds2", CFG, workers=2, progress=False)  # tokenizer retrained
    for name in ("train/00000.bin", "val/00000.bin", "tokenizer.json"):
        a = (dataset_dir / "ds" / name).read_bytes()
        assert a == (dataset_dir / "ds2" / name).read_bytes() and len(a) > 0


def test_small_shards_read_as_one_array(dataset_dir):
    cfg = CFG.model_copy(update={"shard_mb": 0.001, "tokenizer_file": str(dataset_dir / "ds" / "tokenizer.json")})
    prepare([str(dataset_dir / "src")], dataset_dir / "ds3", cfg, progress=False)
    ds = Dataset(dataset_dir / "ds3")
    seqs = ds.sequences("train")
    assert len(ds.manifest["splits"]["train"]["shards"]) > 1
    ref = np.concatenate([np.fromfile(dataset_dir / "ds3" / s["file"], dtype=np.uint16).reshape(-1, 32)
                          for s in ds.manifest["splits"]["train"]["shards"]])
    assert np.array_equal(np.asarray(seqs), ref) and np.array_equal(seqs[[5, 0, -1]], ref[[5, 0, -1]])
    assert np.array_equal(seqs[3], ref[3]) and np.array_equal(seqs[2:9], ref[2:9])


def test_tokenizer_from_another_dataset_is_refused(dataset_dir, tmp_path):
    import shutil

    shutil.copytree(dataset_dir / "ds", tmp_path / "ds")
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = "0" * 64
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CramlmError, match="not the tokenizer"):
        Dataset(tmp_path / "ds")


def test_nothing_usable_is_a_clear_error(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("x\n\ny\n")
    with pytest.raises(CramlmError, match="no usable documents"):
        prepare([str(tmp_path / "src")], tmp_path / "out", CFG, progress=False)


def test_mlm_batches(dataset_dir):
    ds = Dataset(dataset_dir / "ds")
    loader = BatchLoader(ds, mask_rate=0.25, seed=1)
    b = loader.next_batch(64)
    k = round(0.25 * 32)
    assert b["input_ids"].shape == b["labels"].shape == (64, 32) and b["mask_positions"].shape == (64, k)
    original = torch.from_numpy(ds.sequences("train")[loader._epoch_order(0)[:64]].astype(np.int64))
    chosen = b["labels"] != IGNORE
    assert (chosen.sum(1) == k).all()
    assert torch.equal(b["labels"][chosen], original[chosen])
    assert (original[chosen] > 4).all()  # never [PAD]/[UNK]/[CLS]/[SEP]/[MASK]
    assert torch.equal(b["input_ids"][~chosen], original[~chosen])
    assert torch.equal(torch.gather(chosen, 1, b["mask_positions"]), torch.ones(64, k, dtype=torch.bool))
    many = torch.cat([loader.next_batch(64)["input_ids"][loader.next_batch(64)["labels"] != IGNORE] for _ in range(1)])
    assert many.numel() > 0
    masked = sum(((bb := loader.next_batch(128))["input_ids"] == MASK_ID).sum().item() for _ in range(10))
    assert 0.75 < masked / (10 * 128 * k) < 0.85


def test_causal_batches(dataset_dir):
    b = BatchLoader(Dataset(dataset_dir / "ds"), objective="causal").next_batch(8)
    assert set(b) == {"input_ids", "labels"} and torch.equal(b["input_ids"], b["labels"])


def test_whole_word_mask_keeps_k(dataset_dir):
    b = BatchLoader(Dataset(dataset_dir / "ds"), whole_word_mask=True).next_batch(16)
    assert ((b["labels"] != IGNORE).sum(1) == 8).all()


def test_resume_is_exact_and_deterministic(dataset_dir):
    ds = Dataset(dataset_dir / "ds")
    a = BatchLoader(ds, seed=3)
    for n in (7, 50, 300):  # crosses an epoch boundary
        a.next_batch(n)
    state = json.loads(json.dumps(a.state_dict()))
    expected = [a.next_batch(n) for n in (5, 64, 200)]
    b = BatchLoader(ds, seed=3)
    b.load_state_dict(state)
    for n, want in zip((5, 64, 200), expected):
        got = b.next_batch(n)
        assert all(torch.equal(got[key], want[key]) for key in want)
    assert a.epoch >= 1
    with pytest.raises(CramlmError, match="seed"):
        BatchLoader(ds, seed=4).load_state_dict(state)


def test_ranks_do_not_overlap(dataset_dir):
    ds = Dataset(dataset_dir / "ds")
    n = len(ds.sequences("train"))
    loaders = [BatchLoader(ds, objective="causal", rank=r, world_size=3) for r in range(3)]
    rows = [set(l._take(n // 3, 0, 0)[0].tolist()) for l in loaders]
    assert not rows[0] & rows[1] and not rows[1] & rows[2] and sum(map(len, rows)) == n - n % 3


def test_cli_prepare_and_stats(dataset_dir, cli, tmp_path):
    code, out, err = cli("prepare", dataset_dir / "src", "--out", tmp_path / "ds", "--vocab-size", "150",
                         "--seq-len", "16", "--quiet", "data.min_chars=8")
    assert code == 0, err
    assert Dataset(tmp_path / "ds").seq_len == 16 and "duplicate" in out
    code, out, _ = cli("prepare", "--stats", tmp_path / "ds")
    assert code == 0 and "token types used" in out
    code, _, err = cli("prepare", tmp_path / "empty_nope", "--out", tmp_path / "x")
    assert code == 2 and "does not exist" in err
    code, _, err = cli("prepare", dataset_dir / "src", "--out", tmp_path / "y", "data.nosuch=1")
    assert code == 2 and "nosuch" in err


def test_prefetch_gives_the_same_batches(dataset_dir):
    ds = Dataset(dataset_dir / "ds")
    plain, ahead = BatchLoader(ds, seed=2), BatchLoader(ds, seed=2, prefetch=True)
    for n in (16, 16, 40, 40, 3, 16):
        a, b = plain.next_batch(n), ahead.next_batch(n)
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert plain.state_dict() == ahead.state_dict()


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.bin"))}


def test_resume_skips_finished_units_and_matches(dataset_dir, tmp_path):
    cfg = CFG.model_copy(update={"shard_mb": 0.002, "tokenizer_file": str(dataset_dir / "ds" / "tokenizer.json")})
    src = [str(dataset_dir / "src")]
    full = prepare(src, tmp_path / "full", cfg, progress=False)
    assert full["units"] >= 3
    part = tmp_path / "part"
    prepare(src, part, cfg, progress=False)
    # a crash during the last unit: its record and shards never got committed
    last = full["units"] - 1
    for p in [part / "units" / f"{last:05d}.json", part / "train" / f"{last:05d}.bin", part / "manifest.json"]:
        p.unlink(missing_ok=True)
    kept = {p: p.stat().st_mtime_ns for p in (part / "train").glob("*.bin")}
    again = prepare(src, part, cfg, progress=False)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished units were not rewritten
    assert _files(part) == _files(tmp_path / "full")
    keys = ("documents", "tokens", "dropped")
    assert {k: again[k] for k in keys} == {k: full[k] for k in keys}
    changed = cfg.model_copy(update={"seq_len": 16})  # another config is refused, or starts over with force
    with pytest.raises(CramlmError, match=r"another config: data.seq_len=32 \(now 16\).*--force"):
        prepare(src, part, changed, progress=False)
    assert prepare(src, part, changed, progress=False, force=True)["seq_len"] == 16


def test_shard_and_merge_equal_a_single_run(dataset_dir, tmp_path, cli):
    from cramlm.data.prepare import merge

    cfg = CFG.model_copy(update={"shard_mb": 0.002, "tokenizer_file": str(dataset_dir / "ds" / "tokenizer.json")})
    src = [str(dataset_dir / "src")]
    whole = prepare(src, tmp_path / "whole", cfg, progress=False)
    for i in range(2):
        part = prepare(src, tmp_path / f"p{i}", cfg, progress=False, shard=(i, 2))
        assert part["partial"]["shard"] == [i, 2]
    with pytest.raises(CramlmError, match="missing"):
        merge([tmp_path / "p0"], tmp_path / "bad")
    merged = merge([tmp_path / "p0", tmp_path / "p1"], tmp_path / "merged")
    assert _files(tmp_path / "merged") == _files(tmp_path / "whole")
    assert {k: merged[k] for k in ("documents", "tokens", "sequences", "dropped")} == \
        {k: whole[k] for k in ("documents", "tokens", "sequences", "dropped")}
    assert len(BatchLoader(Dataset(tmp_path / "merged")).next_batch(4)["input_ids"]) == 4
    code, _, err = cli("prepare", *src, "--out", tmp_path / "x", "--shard", "0/2")
    assert code == 2 and "--tokenizer-file" in err


def test_near_duplicates_and_compression_filter(tmp_path):
    base = " ".join(WORDS * 3)
    rng = random.Random(0)  # random letters: many tokens per character for a tokenizer trained on words
    noise = " ".join("".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(8)) for _ in range(50))
    docs = [base, base.replace("fast", "quick"), *[" ".join(random.Random(i).sample(WORDS, 25)) for i in range(60)],
            noise]
    (tmp_path / "a.txt").write_text("\n\n".join(docs))
    cfg = DataConfig(vocab_size=200, seq_len=16, val_fraction=0.0, min_chars=8, near_dedup=True,
                     near_dedup_threshold=0.7, max_tokens_per_char_z=3.0)
    m = prepare([str(tmp_path / "a.txt")], tmp_path / "ds", cfg, progress=False)
    assert m["dropped"].get("near_duplicate") == 1
    assert m["dropped"].get("compression") == 1 and m["compression_filter"]["active"]


def test_frequency_order_puts_common_tokens_first(dataset_dir, tmp_path):
    cfg = CFG.model_copy(update={"order": "frequency", "tokenizer_file": str(dataset_dir / "ds" / "tokenizer.json")})
    prepare([str(dataset_dir / "src")], tmp_path / "ds", cfg, progress=False)
    ds = Dataset(tmp_path / "ds")
    loader = BatchLoader(ds, objective="causal")
    counts = np.load(tmp_path / "ds" / "token_counts.npy") + 1.0
    logp = np.log(counts / counts.sum())
    scores = [logp[row].mean() for row in loader.next_batch(len(loader))["input_ids"].numpy()]
    assert all(a >= b - 1e-5 for a, b in zip(scores, scores[1:])) and scores[0] > scores[-1] + 0.1
    fresh = BatchLoader(ds, objective="causal")
    assert torch.equal(loader.next_batch(5)["input_ids"], fresh.next_batch(5)["input_ids"])


def test_cluster_pruning_keeps_the_hard_fraction(dataset_dir, tmp_path):
    from cramlm.config import PruneConfig
    from cramlm.data.prune import ClusterPruner

    rng = random.Random(1)
    common = [" ".join(rng.choice(WORDS[:8]) for _ in range(30)) for _ in range(90)]
    odd = [" ".join(f"w{rng.randint(0, 10**6)}x" for _ in range(30)) for _ in range(10)]
    pruner = ClusterPruner(PruneConfig(method="cluster", keep=0.5, n_clusters=4)).fit(common + odd)
    scores = pruner.scores(common + odd)
    assert scores[90:].mean() > scores[:90].mean()  # atypical documents score as hard
    kept = pruner.keep(common + odd)
    assert 35 <= len(kept) <= 65 and pruner.dropped == 100 - len(kept)
    assert sum(t in odd for t in kept) >= 8
    cfg = CFG.model_copy(update={"prune": PruneConfig(method="cluster", keep=0.7, n_clusters=4),
                                 "tokenizer_file": str(dataset_dir / "ds" / "tokenizer.json")})
    m = prepare([str(dataset_dir / "src")], tmp_path / "ds", cfg, progress=False)
    assert 0.2 * 400 <= m["dropped"]["pruned"] <= 0.4 * 400 and m["documents"] == 400 - m["dropped"]["pruned"]


def test_proxy_pruning_scores_unusual_documents_as_hard(tmp_path, monkeypatch):
    from cramlm.config import PruneConfig
    from cramlm.data.prune import ProxyPruner
    from cramlm.data.tokenizer import save_tokenizer, train_tokenizer

    monkeypatch.setattr(ProxyPruner, "STEPS", 60)
    rng = random.Random(1)
    common = [" ".join(rng.choice(WORDS[:8]) for _ in range(30)) for _ in range(90)]
    odd = [" ".join(rng.choice(WORDS[8:]) for _ in range(30)) for _ in range(10)]
    save_tokenizer(train_tokenizer(common + odd, "wordpiece", 200), tmp_path / "tok.json")
    pruner = ProxyPruner(PruneConfig(method="proxy", keep=0.5, seed=0), str(tmp_path / "tok.json"), 32)
    pruner.fit(common + odd)
    scores = pruner.scores(common + odd)
    assert scores[90:].mean() > scores[:90].mean() + 0.3  # rare words are what the tiny model has not learnt
    kept = pruner.keep(common + odd)
    assert 40 <= len(kept) <= 60 and sum(t in odd for t in kept) >= 8


def test_cli_prune_proxy_and_bad_method(dataset_dir, cli, tmp_path, monkeypatch):
    from cramlm.data.prune import ProxyPruner

    monkeypatch.setattr(ProxyPruner, "STEPS", 20)
    tok = dataset_dir / "ds" / "tokenizer.json"
    code, out, err = cli("prepare", dataset_dir / "src", "--out", tmp_path / "ds", "--tokenizer-file", tok,
                         "--seq-len", "32", "--prune", "proxy", "--prune-keep", "0.6", "--quiet", "data.min_chars=8")
    assert code == 0, err
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert m["prune"]["method"] == "proxy" and 0.3 * 400 <= m["dropped"]["pruned"] <= 0.5 * 400
    code, _, err = cli("prepare", dataset_dir / "src", "--out", tmp_path / "x", "--prune", "hardest")
    assert code == 2 and "proxy" in err


def test_empty_val_split_is_counted_as_zero(dataset_dir, tmp_path, cli):
    cfg = CFG.model_copy(update={"val_fraction": 0.0, "tokenizer_file": str(dataset_dir / "ds" / "tokenizer.json")})
    m = prepare([str(dataset_dir / "src")], tmp_path / "ds", cfg, progress=False)
    assert m["splits"]["val"] == {"documents": 0, "tokens": 0, "dropped_tail_tokens": 0, "sequences": 0, "shards": []}
    assert Dataset(tmp_path / "ds").sequences("val").shape == (0, 32)
    with pytest.raises(CramlmError, match="too few"):
        BatchLoader(Dataset(tmp_path / "ds"), split="val")
    assert cli("prepare", "--stats", tmp_path / "ds")[0] == 0
