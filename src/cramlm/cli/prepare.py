"""`cramlm prepare`."""

from cramlm.errors import CramlmError


def command() -> None:
    """Not available yet."""
    raise CramlmError("cramlm prepare is not available yet")
