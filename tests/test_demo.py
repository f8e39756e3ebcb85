import json
import random

from rich.console import Console

from cramlm.demo import run_demo, verdict

WORDS = ("the model reads a sentence and predicts each hidden word from the words around it while the budget "
         "clock runs down so every step must count and the data must be clean").split()


def _corpus(path, n_docs=400, seed=0):
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120))) + "." for _ in range(n_docs)]
    path.write_text("\n\n".join(docs))
    return path


def test_demo_runs_every_stage_and_writes_a_run_dir(tmp_path):
    src = _corpus(tmp_path / "corpus.txt")
    console = Console(record=True, width=120)
    result = run_demo(
        tmp_path / "demo", budget="6steps", sources=[str(src)], console=console, eval_batches=2,
        overrides=["data.vocab_size=256", "data.min_chars=10", "data.val_fraction=0.1", "model.n_layers=2",
                   "model.d_model=64", "model.n_heads=2", "model.d_ff=128", "train.batch_size=16",
                   "train.micro_batch_size=8", "data.tokenizer_sample_mb=1", "data.max_tokens_per_char_z=null"],
    )
    run = result.run_dir
    assert (run / "config.yaml").is_file() and (run / "final" / "model.safetensors").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in records)
    assert json.loads((run / "results" / "train.json").read_text())["steps"] == 6
    # the three scores are real cross-entropies on the same positions: the untrained model is near ln(V)
    assert 0 < result.unigram_loss < result.untrained_loss
    text = console.export_text()
    for shown in ["unigram baseline", "crammed encoder", "fill-mask"]:
        assert shown in text


def test_the_verdict_says_worse_not_a_negative_margin():
    assert verdict(0.1334) == "[green]beats[/] the unigram baseline by 0.133 nats"
    assert verdict(-0.1334) == "[red]does not beat[/] the unigram baseline: 0.133 nats worse"
    assert "-" not in verdict(-2.5) and "by" not in verdict(-2.5)
    assert verdict(0.0) == "[red]does not beat[/] the unigram baseline: the same loss"
