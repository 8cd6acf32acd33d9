"""The one error type the command line turns into a one-line message and a non-zero exit."""


class HeadcodeError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""
