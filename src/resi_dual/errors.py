"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""


class ResiDualError(Exception):
    """A problem with the user's input (spec, file, data, configuration), stated in one line."""
