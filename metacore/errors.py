"""The one exception type that means "bad input": the CLI and app show its message."""


class MetacoreError(Exception):
    """A user-facing error with a clear, one-line message."""
