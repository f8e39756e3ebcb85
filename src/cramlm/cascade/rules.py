"""User rules: regular expression -> label, for the obvious cases a user knows better than any model.

A rules file is YAML, a list of `{pattern: REGEX, label: LABEL}` (optional `flags: i` for case-insensitive); the first
matching rule answers. A rule that matches is certain (confidence 1); calibration still checks on the dev split that
the rules keep the accuracy within the tolerance, and switches them off otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from cramlm.config import load_yaml
from cramlm.errors import CramlmError
from cramlm.cascade.linear import Text, _join


class RuleStage:
    """The first rule whose pattern matches the text gives the label; rows of zeros mean "no rule matched"."""

    kind = "rules"

    def __init__(self, rules: list[dict], labels: Sequence[str]):
        self.labels = list(labels)
        self.rules = rules
        self._compiled = []
        for i, rule in enumerate(rules):
            if rule["label"] not in self.labels:
                raise CramlmError(f"rule {i + 1} ({rule['pattern']!r}) gives label {rule['label']!r}, "
                                  f"which is not a label of the task ({', '.join(self.labels)})")
            flags = re.IGNORECASE if "i" in rule.get("flags", "") else 0
            try:
                pattern = re.compile(rule["pattern"], flags)
            except re.error as e:
                raise CramlmError(f"rule {i + 1}: bad regular expression {rule['pattern']!r}: {e}") from None
            self._compiled.append((pattern, self.labels.index(rule["label"])))

    def predict_proba(self, texts: Sequence[Text]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for row, text in enumerate(texts):
            doc = _join(text)
            for pattern, label in self._compiled:
                if pattern.search(doc):
                    out[row, label] = 1.0
                    break
        return out

    def flops_per_example(self, texts: Sequence[Text]) -> float:
        return 0.0  # regex matching is no floating-point work; its cost shows in the measured wall time

    @classmethod
    def from_yaml(cls, path: Path, labels: Sequence[str]) -> "RuleStage":
        data = load_yaml(path, "rules file")
        if isinstance(data, dict) and "rules" in data:
            data = data["rules"]
        if not isinstance(data, list) or not data:
            raise CramlmError(f"rules file {path} must hold a non-empty list of {{pattern: REGEX, label: LABEL}}")
        rules = []
        for i, item in enumerate(data):
            if not isinstance(item, dict) or "pattern" not in item or "label" not in item:
                raise CramlmError(f"rules file {path}: rule {i + 1} needs a pattern and a label")
            rule = {"pattern": str(item["pattern"]), "label": str(item["label"])}
            if item.get("flags"):
                rule["flags"] = str(item["flags"])
            rules.append(rule)
        return cls(rules, labels)

    def save(self, directory: Path, name: str = "rules") -> list[str]:
        (Path(directory) / f"{name}.yaml").write_text(yaml.safe_dump({"rules": self.rules}, sort_keys=False))
        return [f"{name}.yaml"]

    @classmethod
    def load(cls, directory: Path, labels: Sequence[str], name: str = "rules") -> "RuleStage":
        return cls.from_yaml(Path(directory) / f"{name}.yaml", labels)
