"""Exceptions raised by linfuse. Every message names the parameter or file at fault and what to do about it."""


class LinfuseError(Exception):
    """Base class of every error linfuse raises on purpose."""


class InvalidArgumentError(LinfuseError, ValueError):
    """An argument is outside its allowed range or set; raised before any work starts."""


class WeightsError(LinfuseError):
    """A weights directory or file is missing, unreadable, corrupt or incomplete."""


class ArchitectureMismatchError(WeightsError):
    """Weights were made for a different model architecture than the one they are being loaded into."""
