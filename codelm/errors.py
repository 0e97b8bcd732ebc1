"""The one exception type for user mistakes (bad path, corrupt file, bad flag value).

The CLI turns it into a one-line message and a non-zero exit; anything else is a
bug and keeps its traceback.
"""


class CodelmError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def first_line(e: BaseException) -> str:
    """The first non-blank line of an error's message (its type's name if it has none):
    what a one-line report quotes of a library's multi-line error."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
