import os
import tempfile

import pytest
import torch

# Two pytest workers share two cores: one intra-op thread each keeps them from fighting.
torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests' CPU-peak measurements (tiny, under load) stay out of the user's cache.
os.environ["CRAMLM_CACHE_DIR"] = tempfile.mkdtemp(prefix="cramlm-test-cache-")


@pytest.fixture
def cli(capsys):
    """Run the `cramlm` CLI in-process; returns (exit_code, stdout, stderr)."""
    from cramlm.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


WORDS = "the cat sat on a mat while dogs ran in parks and birds sang songs of rivers trees stones".split()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A prepared dataset dir: 400 random documents over 20 words, vocab 128, sequences of 32 tokens."""
    import random

    from cramlm.config import DataConfig
    from cramlm.data.prepare import prepare

    root = tmp_path_factory.mktemp("tiny-data")
    rng = random.Random(0)
    docs = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))) for _ in range(400))
    (root / "corpus.txt").write_text("\n\n".join(docs))
    cfg = DataConfig(seq_len=32, vocab_size=128, val_fraction=0.1, min_chars=0, max_tokens_per_char_z=None)
    prepare([str(root / "corpus.txt")], root / "ds", cfg, progress=False)
    return root / "ds"
