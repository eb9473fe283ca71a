"""The one exception the CLI turns into a one-line "error: ..." and exit 2.

Raise ``InputError`` for input a user can fix (a bad option, a missing dataset, a damaged or
hand-edited file); its message says what to fix. Anything else is a bug: the CLI shows its
traceback and exits 1.
"""


class InputError(ValueError):
    """Input the user can fix; the message is one line that says how."""
