"""The on-disk cache of per-layer times (runtime/tables/table.py): one JSON file per timing identity.

A layer's time depends on the layer (kind, input shape with its batch, widths, kernel: its geometry) and on
where and how it ran: the backend, the device (a CPU model string, a GPU's name), the precision and the
timer's settings (library version, threads). The file is named after the sha256 of that identity and
holds the identity itself and geometry -> ms, so that a second build on the same device measures nothing
and another device, precision or thread count never reads these times. Writes go to a temporary file
that replaces the cache in one step, merged under a lock with what other processes saved meanwhile; a cache that
cannot be read is measured again (it is only a cache).
Folder: `cache_dir`, default $PRUNEFX_CACHE_DIR/latency, else ~/.cache/prunefx/latency.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: saves are not serialised
    fcntl = None  # type: ignore[assignment]

from prunefx.graph.cache_folder import cache_root
from prunefx.graph.errors import PrunefxError
from prunefx.graph.safety.regular_files import read_regular_file
from prunefx.graph.whole_files import write_whole

log = logging.getLogger(__name__)
_MAX_MS = 3.6e6  # an hour: a layer time above it is no time (1e308 made every sum inf), so it is timed again


def default_cache_dir() -> Path:
    return cache_root() / "latency"


class LatencyCache:
    """geometry -> ms for one timing identity (a mapping of plain strings), kept in `folder`."""

    def __init__(self, identity: dict[str, str], folder: str | os.PathLike | None = None):
        self.identity = {str(key): str(value) for key, value in identity.items()}
        canonical = json.dumps(self.identity, sort_keys=True).encode()
        name = f"{self.identity.get('backend', 'layers')}-{hashlib.sha256(canonical).hexdigest()[:20]}.json"
        self.path = Path(folder) if folder is not None else default_cache_dir()
        self.path = self.path / name
        self.entries = self._load()

    def _load(self, *, saving: bool = False) -> dict[str, float]:
        """The file's entries; a file that cannot be read or is another timer's gives none, said unless `saving`
        (the save then replaces it)."""
        if not self.path.exists():
            return {}
        try:  # a regular file only: a FIFO put there would hang the read
            record = json.loads(read_regular_file(self.path, "latency cache"))
        except (OSError, ValueError, RecursionError, PrunefxError) as error:
            if not saving:
                log.warning("latency cache %s is unreadable (%s); its layers are measured again", self.path, error)
            return {}
        entries = record.get("entries") if isinstance(record, dict) else None
        if not isinstance(entries, dict) or record.get("identity") != self.identity:
            if not saving:
                log.warning("latency cache %s belongs to another device or timer; its layers are measured again",
                            self.path)
            return {}
        return {str(key): float(value) for key, value in entries.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < _MAX_MS}

    def get(self, geometry: str) -> float | None:
        return self.entries.get(geometry)

    def put(self, geometry: str, ms: float) -> None:
        self.entries[geometry] = float(ms)

    def save(self) -> None:
        """Write the entries over what the file holds by now: another process timing on the same device may have
        saved since this cache was read, and its entries are kept (this one's win where both timed a layer)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path.with_name(f"{self.path.name}.lock")):
            self.entries = {**self._load(saving=True), **self.entries}
            write_whole(self.path, json.dumps({"identity": self.identity, "entries": self.entries}, indent=0,
                                              sort_keys=True))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An advisory lock on `path` (made if missing) held in the block: savers of one cache take turns. Where the
    file system cannot lock (some network mounts) or there is no flock, the block runs unlocked: only a cache."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock
