"""The one parser of a `path/to/file.py:FACTORY` model reference, kept free of torch: the output checks
(prunefx/output_paths.py) read it before any heavy import, and prunefx/models/references.py builds from it."""

from __future__ import annotations


def file_factory(ref: str) -> tuple[str, str] | None:
    """(path, factory) for `path/to/file.py:FACTORY`, else None. rpartition: the path itself may hold ':'
    (a Windows drive letter); the factory may be empty, which the caller refuses with its own words."""
    path, sep, factory = ref.rpartition(":")
    return (path, factory) if sep and path.endswith(".py") else None
