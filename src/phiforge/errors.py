"""User-facing errors: the CLI prints these as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input (recipe, data, model path) or a run that must stop cleanly.

    The message says what is wrong, where, and how to fix it; the CLI shows it without a traceback.
    """
