"""Errors a user can fix: each message is one line naming the problem and the fix."""


class ToolkitError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


class InvalidInputError(ToolkitError, ValueError):
    """Bad user input: an empty prompt, a malformed weight, an unreadable image, an impossible size."""


class ModelUnavailableError(ToolkitError):
    """Weights that are neither cached nor downloadable (offline, unknown name, missing file)."""


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, shortened to `limit` characters (its type name when empty)."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
