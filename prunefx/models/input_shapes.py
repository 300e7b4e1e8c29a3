"""Input shape strings ("1x3x224x224") read and bounded before any example input is allocated."""

from __future__ import annotations

import math

from prunefx.graph.errors import PrunefxError, printable
from prunefx.graph.program_metadata import MAX_INPUT_ELEMENTS

_SHAPE_EXAMPLE = "1x3x224x224"


class InputShapeError(PrunefxError):
    """An input shape string is malformed."""


# An example input is allocated from the shape: bound it before torch tries, with the bound a saved
# Program's inputs get (graph/program_metadata.py says why 2**28 elements).
MAX_INPUT_DIMS = 8


def parse_input_shape(text: str) -> tuple[int, ...]:
    """"1x3x224x224" -> (1, 3, 224, 224); every dimension a positive integer, the whole allocatable."""
    shown = printable(repr(text))[:60]
    if not isinstance(text, str) or not text.strip():
        raise InputShapeError(f"input shape is empty; write it like {_SHAPE_EXAMPLE}")
    parts = text.strip().lower().split("x")
    if len(parts) > MAX_INPUT_DIMS:
        raise InputShapeError(f"input shape {shown} has {len(parts)} dimensions; at most {MAX_INPUT_DIMS}")
    dims = []
    for part in parts:
        part = part.strip()
        # isascii: str.isdigit also accepts digits such as '²' that int() rejects; 19 digits bound int().
        if not (part.isascii() and part.isdigit()) or len(part) > 18 or int(part) == 0:
            raise InputShapeError(f"input shape {shown}: {printable(repr(part))[:30]} is not a positive integer; "
                                  f"write it like {_SHAPE_EXAMPLE}")
        dims.append(int(part))
    return check_input_shape(tuple(dims), "input shape")


def check_input_shape(shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    """`shape` as given, when an input of it can be allocated; InputShapeError otherwise."""
    if any(dim < 1 for dim in shape):
        raise InputShapeError(f"{what} {shape} has a dimension below 1")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise InputShapeError(f"{what} {'x'.join(map(str, shape))} has {math.prod(shape):.3g} elements, more than "
                              f"prunefx allocates for an example input (2**28)")
    return shape
