"""Errors raised by the IR layer. Each carries a message meant to be shown to a user as is."""


class PrunefxError(Exception):
    """Base class of every error prunefx raises on purpose (the CLI prints these in one line)."""


class CaptureError(PrunefxError):
    """torch.export could not capture the model."""


class VerificationError(PrunefxError):
    """A Program failed a validity check (lint, shapes, re-export, numerics)."""


class ProgramFileError(PrunefxError):
    """A saved Program could not be read."""
