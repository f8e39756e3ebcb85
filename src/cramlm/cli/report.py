"""`cramlm report`."""

from cramlm.errors import CramlmError


def command() -> None:
    """Not available yet."""
    raise CramlmError("cramlm report is not available yet")
