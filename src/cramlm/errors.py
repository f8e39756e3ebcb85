"""The one error type users see: its message is printed on one line and the CLI exits 2."""


class CramlmError(Exception):
    """A failure caused by the user's input or environment, explained in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
