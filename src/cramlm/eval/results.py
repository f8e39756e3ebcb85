"""One results schema for every evaluation: `RUN_DIR/results/<key>.json`, printed as-is by `--json`.

`key` is the evaluation's name plus the input it scored (`ppl-wikitext-2-raw-test`, `mlm-wt2`), so scoring another
text or dataset adds a file instead of replacing one; scoring the same input again replaces its file. `metrics` holds
the flat headline numbers (what `report` tabulates and plots); `details` the breakdown (per task, per seed, per
split); `settings` everything that determined the numbers, so a result can be reproduced.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cramlm.errors import CramlmError

SCHEMA = "cramlm.results/1"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Result:
    name: str  # glue, ppl, lambada, mlm
    model: str  # the run dir or exported HF dir evaluated
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    runtime_s: float = 0.0
    created: str = field(default_factory=_now)
    schema: str = SCHEMA
    key: str = ""  # the results file's name: `name` and the input scored; `name` alone when it has one input

    def __post_init__(self) -> None:
        self.key = self.key or self.name

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def path(self, run_dir: str | Path) -> Path:
        return Path(run_dir) / "results" / f"{self.key}.json"

    def write(self, run_dir: str | Path) -> Path:
        """Write `run_dir/results/<key>.json` atomically (a reader never sees half a file)."""
        path = self.path(run_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json() + "\n")
        os.replace(tmp, path)
        return path


def result_key(name: str, source: str | Path) -> str:
    """`name` and the input scored, as a file name: a text file by its folder and stem (`ppl-wikitext-2-raw-test`:
    the test files of two corpora stay apart), a dataset dir by its name (`mlm-wt2`)."""
    path = Path(source).resolve()
    parts = [path.name] if path.is_dir() else [path.parent.name, path.stem]
    label = re.sub(r"[^A-Za-z0-9._]+", "-", "-".join(p for p in parts if p)).strip("-.")
    return f"{name}-{label}" if label else name


def _finite(value: Any) -> Any:
    """NaN and inf become None: strict JSON that every reader accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_result(path: str | Path) -> Result:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CramlmError(f"results file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise CramlmError(f"results file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise CramlmError(f"results file {path} is not a cramlm result (schema {SCHEMA})")
    try:
        return Result(**data)
    except TypeError as e:
        raise CramlmError(f"results file {path} does not match schema {SCHEMA}: {e}") from None


def load_results(run_dir: str | Path) -> dict[str, Result]:
    """Every result of a run dir by key (glue, ppl-wikitext-2-raw-test, ...); empty when none was written yet."""
    folder = Path(run_dir) / "results"
    out = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            result = read_result(path)
            out[result.key] = result
    return out
