"""`cramlm eval rouge`: the scores are rouge-score's, the lead baselines, the results file, refused inputs."""

import json

import pytest

from cramlm.eval.results import result_key
from cramlm.eval.rouge import first_sentence, first_words, score_all

from test_finetune import encoder_run, source, write_pairs  # noqa: F401 (fixtures)

PAIRS = [
    ("The cat sat on the mat. It was warm.", "A cat sat on a mat."),
    ("Dogs ran in the parks while birds sang.", "dogs ran in parks"),
    ("Rivers and trees and stones.", "stones and trees"),
    ("Nothing in common here.", "completely different words entirely"),
]


def test_scores_are_rouge_scores_own():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    predictions, references = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    ours = score_all(predictions, references)
    for kind in ("rouge1", "rouge2", "rougeL"):
        direct = [scorer.score(r, p)[kind].fmeasure for p, r in PAIRS]
        assert ours[kind] == pytest.approx(sum(direct) / len(direct), abs=1e-12)
    # hand-computed: "the cat sat on the mat it was warm" vs "a cat sat on a mat": 4 unigrams shared (cat sat on
    # mat) of 9 and 6 -> F1 = 2*4/(9+6); bigrams "cat sat", "sat on" of 8 and 5 -> 2*2/13
    one = score_all([PAIRS[0][0]], [PAIRS[0][1]])
    assert one["rouge1"] == pytest.approx(8 / 15) and one["rouge2"] == pytest.approx(4 / 13)
    assert score_all(["same words"], ["same words"]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


def test_lead_baselines():
    assert first_sentence("St. Louis is a city in the U.S. state of Missouri. It is big.") == \
        "St. Louis is a city in the U.S. state of Missouri."
    assert first_sentence("J. R. R. Tolkien was a writer! He taught.") == "J. R. R. Tolkien was a writer!"
    assert first_sentence("A title line\nThe body. More.") == "A title line"
    assert first_sentence("No full stop at all") == "No full stop at all"
    assert first_words("one two  three\nfour five", 4) == "one two three four"


def test_eval_rouge_writes_a_result_the_report_shows(source, tmp_path, cli):  # noqa: F811
    pytest.importorskip("rouge_score")
    from cramlm.eval.rouge import generate_responses
    from cramlm.generation import load_decoder
    from cramlm.report.html import report

    data = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    code, out, err = cli("eval", "rouge", source, "--data", data, "--max-new-tokens", "6", "--limit", "3")
    assert code == 0, err
    assert "lead-1 sentence" in out and "ROUGE-L" in out
    result = json.loads((source / "results" / f"{result_key('rouge', data)}.json").read_text())
    assert result["details"]["examples"] == 3 and result["settings"]["max_new_tokens"] == 6
    references = [r for _, r in PAIRS[:3]]
    written = [s["model"] for s in result["details"]["samples"]]
    model, tokenizer = load_decoder(source)
    assert written == generate_responses(model, tokenizer, [p for p, _ in PAIRS[:3]], 6)
    m = result["metrics"]
    assert {k: m[k] for k in ("rouge1", "rouge2", "rougeL")} == pytest.approx(score_all(written, references))
    lead1 = score_all([first_sentence(p) for p, _ in PAIRS[:3]], references)
    assert m["lead1_rouge1"] == pytest.approx(lead1["rouge1"]) and m["lead1_rougeL"] == pytest.approx(lead1["rougeL"])
    n = result["settings"]["lead_words"]
    assert n == round(sum(len(r.split()) for r in references) / 3)
    assert m[f"lead{n}w_rouge2"] == pytest.approx(score_all([first_words(p, n) for p, _ in PAIRS[:3]],
                                                            references)["rouge2"])
    assert "lead1_rouge1" in report([source], fmt="md")


def test_refusals_are_one_line(source, encoder_run, tmp_path, cli, monkeypatch):  # noqa: F811
    data = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    code, _, err = cli("eval", "rouge", encoder_run, "--data", data)
    assert code == 2 and "encoder" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = cli("eval", "rouge", source, "--data", tmp_path / "none.jsonl")
    assert code == 2 and "does not exist" in err, err
    monkeypatch.setitem(__import__("sys").modules, "rouge_score", None)
    code, _, err = cli("eval", "rouge", source, "--data", data)
    assert code == 2 and "pip install 'cramlm[rouge]'" in err and len(err.strip().splitlines()) == 1, err
