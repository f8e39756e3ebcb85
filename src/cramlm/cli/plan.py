"""`cramlm plan`."""

from cramlm.errors import CramlmError


def command() -> None:
    """Not available yet."""
    raise CramlmError("cramlm plan is not available yet")
