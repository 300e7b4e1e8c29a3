"""A count with its noun, in the number the count needs: what every message that counts says ("1 block",
"2 blocks"), so that a search that measured one candidate does not print "after 1 candidates"."""

from __future__ import annotations


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """'1 thread', '2 threads'; `plural` where adding an s does not make it ('1 branch', '2 branches')."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
