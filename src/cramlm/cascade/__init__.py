"""Cascade inference: cheap first stages answer the inputs they are sure of, the fine-tuned transformer the rest."""

from cramlm.cascade.calibrate import Calibration, calibrate
from cramlm.cascade.core import Cascade
from cramlm.cascade.linear import LinearStage
from cramlm.cascade.rules import RuleStage

__all__ = ["Calibration", "Cascade", "LinearStage", "RuleStage", "calibrate"]
