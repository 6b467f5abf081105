"""Exceptions raised for bad user input.

Every error that a user can cause (a missing file, a wrong layout, an unknown model) is raised
as a :class:`BussegError` subclass with a message naming the file or value and the problem; the
CLI prints the message without a traceback.
"""


class BussegError(Exception):
    """Base class of every error busseg reports to a user."""


class DataError(BussegError):
    """A dataset, image or mask cannot be used (names the file and the problem)."""


class ConfigError(BussegError):
    """A recipe, option, split file or model name is wrong."""


class CheckpointError(BussegError):
    """A checkpoint is missing, corrupt or belongs to another model."""


class OutputError(BussegError, OSError):
    """An output cannot be written: a path that is a file, a read-only location, a full disk,
    a missing permission. The message names the path and the reason; ``errno`` is the
    operating system's code when there is one (it is still an ``OSError``)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        if errno is None:
            OSError.__init__(self, message)
        else:
            OSError.__init__(self, errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ExportError(BussegError):
    """A model cannot be exported, or its exported graph disagrees with PyTorch."""
