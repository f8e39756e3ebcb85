import json

import pytest

from cramlm.errors import CramlmError
from cramlm.eval.results import SCHEMA, Result, load_results, read_result


def test_result_roundtrip_and_nan_becomes_null(tmp_path):
    r = Result("ppl", str(tmp_path), {"ppl": 12.5, "bad": float("nan")}, details={"n": 3}, settings={"stride": 64})
    path = r.write(tmp_path)
    assert path == tmp_path / "results" / "ppl.json"
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA and data["metrics"] == {"ppl": 12.5, "bad": None}
    back = read_result(path)
    assert back.metrics["ppl"] == 12.5 and back.settings == {"stride": 64} and back.details == {"n": 3}
    (tmp_path / "results" / "train.json").write_text('{"loss": 1.0}')  # other files in results/ are not ours
    assert list(load_results(tmp_path)) == ["ppl"]


def test_bad_results_file_is_a_user_error(tmp_path):
    (tmp_path / "x.json").write_text('{"name": "x"}')
    with pytest.raises(CramlmError, match="not a cramlm result"):
        read_result(tmp_path / "x.json")
    with pytest.raises(CramlmError, match="does not exist"):
        read_result(tmp_path / "nope.json")
