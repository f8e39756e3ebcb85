"""`cramlm export`."""

from cramlm.errors import CramlmError


def command() -> None:
    """Not available yet."""
    raise CramlmError("cramlm export is not available yet")
