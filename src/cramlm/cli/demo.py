"""`cramlm demo`."""

from cramlm.errors import CramlmError


def command() -> None:
    """Not available yet."""
    raise CramlmError("cramlm demo is not available yet")
