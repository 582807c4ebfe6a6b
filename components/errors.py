"""Errors a user can cause and fix (bad params, bad paths, unreachable services).

Stage entry points print their message as one sentence and exit non-zero, without a traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message says what and how."""
