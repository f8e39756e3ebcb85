"""Cascade core: calibration, routing and persistence with tiny real models (no GLUE data, no transformer run)."""

import json
import zlib

import numpy as np
import pytest

from cramlm.cascade import Cascade, LinearStage, RuleStage, calibrate
from cramlm.cascade.calibrate import answers, cross_fit, summarize
from cramlm.cascade.fit import calibrate_cascade
from cramlm.cascade.linear import HashingParams
from cramlm.errors import CramlmError

LABELS = ["negative", "positive"]
FILL = "the a film plot actors it was story scene music".split()
SMALL = HashingParams(n_features=2**12)


def make_split(rng, n):
    """Sentiment where a cue word usually decides; 'meh' sentences are coin flips the linear model cannot know."""
    texts, y = [], []
    for _ in range(n):
        label = int(rng.integers(2))
        kind = rng.random()
        cue = (["awful", "boring", "bad"], ["great", "superb", "good"])[label][int(rng.integers(3))]
        if kind < 0.25:
            cue = "meh"
        texts.append(" ".join([*rng.choice(FILL, 3), cue, *rng.choice(FILL, 2)]) + f" #{int(rng.integers(10**6))}")
        y.append(label)
    return texts, np.array(y)


class Oracle:
    """A stand-in transformer: right on most inputs (hash-decided), confidently; real `predict_proba` contract."""

    kind = "transformer"
    labels = LABELS

    def __init__(self, gold: dict[str, int], error_rate: float = 0.08):
        self.gold, self.error_rate, self.calls = gold, error_rate, []

    def predict_proba(self, texts):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), 2), dtype=np.float32)
        for i, t in enumerate(texts):
            y = self.gold[t]
            wrong = zlib.crc32(t.encode()) % 1000 / 1000 < self.error_rate
            out[i, 1 - y if wrong else y] = 0.9
            out[i, y if wrong else 1 - y] = 0.1
        return out


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    train, dev, test = make_split(rng, 600), make_split(rng, 400), make_split(rng, 200)
    gold = dict(zip(train[0] + dev[0] + test[0], [*train[1], *dev[1], *test[1]]))
    return train, dev, test, gold


@pytest.fixture(scope="module")
def linear(data):
    (tx, ty), *_ = data
    return LinearStage.fit(tx, ty, LABELS, SMALL)


# ---------------------------------------------------------------- calibration


def brute_force_best(names, probs, final, y, max_drop, fixed):
    """The largest share of inputs stage len(fixed) can answer within the tolerance, by trying every distinct
    confidence with `summarize` (earlier stages at `fixed`, later ones off)."""
    i = len(fixed)
    bound = 100.0 * (final.argmax(1) == y).mean() - max_drop - 1e-9
    best = 0.0
    for thr in [None, *np.unique(probs[i].max(1))]:
        ths = [*fixed, thr] + [None] * (len(names) - i - 1)
        cal = summarize(names, ths, probs, final, y, max_drop, [1.0] * len(names), 10.0)
        if cal.accuracy >= bound:
            best = max(best, cal.answered[names[i]])
    return best


@pytest.mark.parametrize("max_drop", [0.0, 0.5, 2.0, 5.0])
def test_thresholds_answer_the_most_within_tolerance(data, linear, max_drop):
    _, (dx, dy), _, gold = data
    p, f = linear.predict_proba(dx), Oracle(gold).predict_proba(dx)
    cal = calibrate(["linear"], [p], f, dy, max_drop, [100.0], 1e6)
    bound = cal.transformer_accuracy - max_drop - 1e-9
    assert cal.accuracy >= bound
    # no point of the sweep answers more inputs and keeps the tolerance
    assert all(pt.accuracy < bound for pt in cal.curves["linear"] if pt.answered > cal.answered["linear"])
    assert cal.answered["linear"] == brute_force_best(["linear"], [p], f, dy, max_drop, [])
    # the vectorized sweep agrees with scoring each of its thresholds directly
    for pt in cal.curves["linear"][:: max(1, len(cal.curves["linear"]) // 25)]:
        direct = summarize(["linear"], [pt.threshold], [p], f, dy, max_drop, [100.0], 1e6)
        assert (direct.accuracy, direct.answered["linear"]) == pytest.approx((pt.accuracy, pt.answered))
        assert direct.relative_flops == pytest.approx(pt.relative_flops)
    assert cal.answered["linear"] + cal.answered["transformer"] == pytest.approx(1.0)
    assert cal.relative_flops == pytest.approx(1e-4 + cal.answered["transformer"])


def test_stages_are_calibrated_greedily_in_order(data, linear):
    """rules, then linear, then a noisy 'small model': each stage's threshold is the best given the earlier ones."""
    _, (dx, dy), _, gold = data
    rules = RuleStage([{"pattern": r"\bsuperb\b", "label": "positive"},
                       {"pattern": r"\bmeh\b", "label": "negative"}], LABELS)
    rng = np.random.default_rng(3)
    final = Oracle(gold).predict_proba(dx)
    small = np.clip(final + rng.normal(0, 0.3, final.shape), 0.01, None)
    small /= small.sum(1, keepdims=True)
    names, probs = ["rules", "linear", "small"], [rules.predict_proba(dx), linear.predict_proba(dx), small]
    cal = calibrate(names, probs, final, dy, 1.0, [0.0, 1.0, 3.0], 10.0)
    assert cal.accuracy >= cal.transformer_accuracy - 1.0 - 1e-9
    for i in range(3):
        assert cal.answered[names[i]] == brute_force_best(names, probs, final, dy, 1.0, cal.thresholds[:i])
    assert cal.thresholds[0] is None  # the 'meh' rule is a coin flip: it would cost far more than a point
    assert cal.answered["linear"] > 0.3 and sum(cal.answered.values()) == pytest.approx(1.0)
    held = cross_fit(names, probs, final, dy, 1.0, [0.0, 1.0, 3.0], 10.0)
    assert set(held["answered"]) == {*names, "transformer"} and sum(held["answered"].values()) == pytest.approx(1)
    assert abs(held["accuracy"] - cal.accuracy) < 5 and held["transformer_accuracy"] == pytest.approx(
        cal.transformer_accuracy)


def test_a_looser_tolerance_never_answers_fewer(data, linear):
    _, (dx, dy), _, gold = data
    p, f = linear.predict_proba(dx), Oracle(gold).predict_proba(dx)
    answered = [calibrate(["linear"], [p], f, dy, d, [1.0], 1.0).answered["linear"] for d in (0.0, 1.0, 3.0, 10.0)]
    assert answered == sorted(answered) and answered[-1] > 0.3  # the cue words make most inputs easy


def test_never_confident_stage_gives_the_transformer_alone(data):
    _, (dx, dy), (qx, qy), gold = data
    wrong = LinearStage(LABELS, np.zeros((1, 2 * SMALL.n_features)), np.zeros(1), SMALL)  # always 50/50
    oracle = Oracle(gold)
    never = RuleStage([{"pattern": "zzz-never", "label": "positive"}], LABELS)
    cascade = calibrate_cascade([never, wrong], dx, dy, LABELS, oracle, 0.5)
    assert cascade.thresholds == [None, None]
    assert cascade.calibration.answered["transformer"] == 1.0
    pred, by = cascade.predict(qx)
    assert (by == 2).all() and (pred == oracle.predict_proba(qx).argmax(1)).all()


def test_routed_inputs_get_exactly_the_transformers_answer(data, linear):
    _, (dx, dy), (qx, qy), gold = data
    oracle = Oracle(gold)
    cascade = calibrate_cascade([linear], dx, dy, LABELS, oracle, max_drop=1.0)
    pred, by = cascade.predict(qx)
    routed = by == 1
    assert 0 < routed.sum() < len(qx)
    assert oracle.calls[-1] == [t for t, r in zip(qx, routed) if r]  # only routed inputs reach the transformer
    assert (pred[routed] == oracle.predict_proba([t for t, r in zip(qx, routed) if r]).argmax(1)).all()
    first = cascade.stages[0].predict_proba([t for t, r in zip(qx, routed) if not r])
    assert (pred[~routed] == first.argmax(1)).all() and (first.max(1) >= cascade.thresholds[0]).all()
    assert cascade.calibration.seconds["dev_inputs"] == len(dx)


def test_rules_answer_first_and_bad_rules_are_switched_off(data):
    _, (dx, dy), _, gold = data
    good = {"pattern": r"\bsuperb\b", "label": "positive"}
    bad = {"pattern": r"\bmeh\b", "label": "positive"}  # half of these are negative
    for rules, expected in (([good], 1.0), ([bad], None)):
        cascade = calibrate_cascade([RuleStage(rules, LABELS)], dx, dy, LABELS, Oracle(gold), 0.5)
        assert cascade.thresholds == [expected]
    stage = RuleStage([good], LABELS)
    assert stage.predict_proba(["a superb film", "a film"]).tolist() == [[0, 1], [0, 0]]
    assert answers(stage.predict_proba(["a film"]), 1.0).tolist() == [False]


# ---------------------------------------------------------------- stages and persistence


def test_linear_stage_learns_and_round_trips_without_pickle(tmp_path, data, linear):
    _, (dx, dy), _, _ = data
    p = linear.predict_proba(dx)
    easy = np.array(["meh" not in t for t in dx])
    assert (p.argmax(1) == dy)[easy].mean() > 0.95
    assert np.allclose(p.sum(1), 1.0, atol=1e-6)
    files = linear.save(tmp_path)
    assert sorted(files) == ["linear.json", "linear.safetensors"]
    again = LinearStage.load(tmp_path)
    assert np.array_equal(again.predict_proba(dx), p)
    assert json.loads((tmp_path / "linear.json").read_text())["hashing"]["n_features"] == 2**12


def test_three_labels_use_a_softmax(data):
    rng = np.random.default_rng(1)
    texts = [f"{w} {' '.join(rng.choice(FILL, 3))}" for w in ["yes", "no", "maybe"] * 30]
    y = np.array([0, 1, 2] * 30)
    stage = LinearStage.fit(texts, y, ["a", "b", "c"], SMALL)
    p = stage.predict_proba(["yes the film", "maybe a plot"])
    assert p.shape == (2, 3) and p.argmax(1).tolist() == [0, 2] and np.allclose(p.sum(1), 1, atol=1e-6)


def test_cascade_directory_round_trips(tmp_path, data, linear):
    _, (dx, dy), (qx, _), gold = data
    oracle = Oracle(gold)
    rules = RuleStage([{"pattern": "superb", "label": "positive", "flags": "i"}], LABELS)
    cascade = calibrate_cascade([rules, linear], dx, dy, LABELS, oracle, 1.0, task="sst2", transformer_ref="../ft")
    cascade.save(tmp_path / "c")
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["cascade.json", "linear.json", "linear.safetensors", "rules.yaml"]
    loaded = Cascade.load(tmp_path / "c", transformer=oracle)
    assert loaded.thresholds == cascade.thresholds and loaded.task == "sst2" and loaded.transformer_ref == "../ft"
    assert [s.kind for s in loaded.stages] == ["rules", "linear"]
    assert all(np.array_equal(a, b) for a, b in zip(loaded.predict(qx), cascade.predict(qx)))
    assert loaded.calibration.curves["linear"][0].threshold is None


def test_label_mismatch_and_bad_rules_are_clear_errors(tmp_path, data, linear):
    _, (dx, dy), _, gold = data
    other = Oracle(gold)
    other.labels = ["neg", "pos"]
    with pytest.raises(CramlmError, match=r"the transformer predicts labels \[neg, pos\]"):
        calibrate_cascade([linear], dx, dy, LABELS, other)
    with pytest.raises(CramlmError, match="not a label of the task"):
        RuleStage([{"pattern": "x", "label": "neutral"}], LABELS)
    with pytest.raises(CramlmError, match="bad regular expression"):
        RuleStage([{"pattern": "(", "label": "positive"}], LABELS)
    bad = tmp_path / "rules.yaml"
    bad.write_text("- pattern: good\n")
    with pytest.raises(CramlmError, match="rule 1 needs a pattern and a label"):
        RuleStage.from_yaml(bad, LABELS)
    with pytest.raises(CramlmError, match="no example of label"):
        LinearStage.fit(["a", "b"], [0, 0], LABELS, SMALL)
    with pytest.raises(CramlmError, match="not a cascade directory"):
        Cascade.load(tmp_path)


def test_a_stage_costing_as_much_as_the_transformer_is_refused(data, linear):
    _, (dx, dy), _, gold = data

    class CheapOracle(Oracle):
        def flops_per_example(self, texts):
            return 10.0  # below the linear stage's sparse dot product on these sentences

    with pytest.raises(CramlmError, match="the linear stage costs .* no less than the transformer's 10"):
        calibrate_cascade([linear], dx, dy, LABELS, CheapOracle(gold))
