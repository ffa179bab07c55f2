"""The one exception type for a user's mistake: the CLI prints its message on one line and exits non-zero."""


class UserError(Exception):
    """A mistake the user can fix (bad config value, missing GPU, unreadable checkpoint...).

    The message says what was wrong and how to fix it; no traceback is shown.
    """
