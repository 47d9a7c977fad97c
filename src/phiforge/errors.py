"""User-facing errors: the CLI prints these as one line and exits with code 2; and what such lines may show."""

import re


class UserError(Exception):
    """A mistake in the user's input (recipe, data, model path) or a run that must stop cleanly.

    The message says what is wrong, where, and how to fix it; the CLI shows it without a traceback.
    """


def without_credentials(text: str) -> str:
    """A URL, or text holding URLs, with every `user:password@` taken out: what logs, errors, manifests and cache
    keys may show. A string that starts with `user:password@` (a base_url missing its scheme) loses it too."""
    return re.sub(r"([a-z][a-z0-9+.-]*://|^)[^\s/@?#'\"]*@", r"\1", text, flags=re.IGNORECASE)
