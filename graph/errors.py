"""Errors raised by the IR layer. Each carries a message meant to be shown to a user as is."""

import re

# torch colours parts of its messages; terminal escape codes have no place in a one-line report.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def first_line(error: BaseException) -> str:
    """`Type: first non-empty line of the message`, short enough for a one-line report."""
    text = _ANSI_ESCAPE.sub("", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__


def printable(text: str | bytes) -> str:
    """Control characters and terminal escapes written out as escapes: shown, never obeyed by a terminal. Bytes (a
    protobuf string field that is not UTF-8, as a damaged ONNX file holds) are shown with their bad bytes escaped."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class PrunefxError(Exception):
    """Base class of every error prunefx raises on purpose (the CLI prints these in one line)."""


class CaptureError(PrunefxError):
    """torch.export could not capture the model."""


class VerificationError(PrunefxError):
    """A Program failed a validity check (lint, shapes, re-export, numerics)."""


class ProgramFileError(PrunefxError):
    """A saved Program could not be read."""
