"""Errors a user can fix: each message is one line naming the problem and the fix."""


class ToolkitError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


class InvalidInputError(ToolkitError, ValueError):
    """Bad user input: an empty prompt, a malformed weight, an unreadable image, an impossible size."""


class ModelUnavailableError(ToolkitError):
    """Weights that are neither cached nor downloadable (offline, unknown name, missing file)."""
