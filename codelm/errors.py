"""The one exception type for user mistakes (bad path, corrupt file, bad flag value).

The CLI turns it into a one-line message and a non-zero exit; anything else is a
bug and keeps its traceback.
"""


class CodelmError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""
