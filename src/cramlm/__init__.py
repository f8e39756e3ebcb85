"""cramlm: budgeted language-model pretraining (plan, prepare, train, eval, export, report)."""

from cramlm.errors import CramlmError

__version__ = "0.1.0"
__all__ = ["CramlmError", "__version__"]
