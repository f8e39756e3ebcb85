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
