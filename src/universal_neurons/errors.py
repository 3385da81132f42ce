"""Exceptions shared across the package."""


class UserError(ValueError):
    """Bad input from the user. The CLI prints the message as one line and exits with 2.

    Messages name the offending value and say what to do about it.
    """
