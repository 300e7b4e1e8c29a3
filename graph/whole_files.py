"""Files written whole or not at all: ONNX exports and lowerings, reports, a cache's engines and tables. A
reader trusts such a file by its name, so a write cut short (a full disk, an interrupt, a killed process) must
not leave a part of one under that name, and a previous file stays as it was until the new one is complete.
The data reach the disk before the rename, and the rename before the call returns (fsync of the file, then of
its folder): a board that loses power keeps the previous file or the new one, never an empty one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from prunefx.graph.errors import PrunefxError, printable

_NAME_ROOM = 200  # of 255 bytes: the dot, the host and process id, the random part and ".partial" take the rest


@contextlib.contextmanager
def replaced_whole(path: Path) -> Iterator[Path]:
    """A hidden temporary path in `path`'s folder to write and check in the block; once the block ends
    without error it replaces `path` (the file it links to, for a link) in one rename, and on any failure it
    is removed."""
    with _temporary(path) as (target, temporary):
        yield temporary
        sync_file(temporary)
        with _named(target):
            os.replace(temporary, target)
        sync_folder(target.parent)


@contextlib.contextmanager
def replaced_together(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """`replaced_whole` for files that belong together (a report's JSON, text and chart; an engine and its layer
    times): all are written and synced before the first replaces its file, and should a rename fail or an
    interrupt land between them, the files already replaced get their previous contents back. All or none."""
    targets = [followed(Path(path)) for path in paths]
    files = [Path(os.path.realpath(target)) for target in targets]  # one file by two names (a/../b, a linked folder)
    twice = next((target for index, target in enumerate(targets) if files[index] in files[:index]), None)
    if twice is not None:
        raise PrunefxError(f"cannot write {printable(str(twice))} twice at once: two of the files name it")
    with contextlib.ExitStack() as stack:
        pairs = [stack.enter_context(_temporary(target)) for target in targets]
        yield [temporary for _, temporary in pairs]
        for target, temporary in pairs:
            with _named(target):
                sync_file(temporary)
        _replace_all(pairs)


def _replace_all(pairs: list[tuple[Path, Path]]) -> None:
    """Each temporary renamed onto its target; on any failure the targets renamed so far are put back: a hard
    link keeps each previous file meanwhile (where the file system has none, that one keeps the new file), and a
    target that did not exist is removed."""
    previous = {target: (target.is_file(), _hard_link(target)) for target, _ in pairs}
    done: list[Path] = []
    try:
        for target, temporary in pairs:
            with _named(target):
                os.replace(temporary, target)
            done.append(target)
    except BaseException:
        for target in reversed(done):
            existed, kept = previous[target]
            try:
                if kept is not None:
                    os.replace(kept, target)
                elif not existed:
                    target.unlink(missing_ok=True)
            except OSError:  # the error raised says what failed; this one file keeps its new contents
                pass
        raise
    finally:
        for _, kept in previous.values():
            if kept is not None:
                kept.unlink(missing_ok=True)
    for folder in dict.fromkeys(target.parent for target, _ in pairs):
        sync_folder(folder)


def _hard_link(target: Path) -> Path | None:
    """A hidden hard link to `target`'s file, named as a temporary (a killed writer's is removed by the next);
    None where there is no file, or the file system makes no hard links."""
    if not target.is_file():
        return None
    kept = target.with_name(f".{hidden_stem(target)}.{writer_tag()}-{secrets.token_hex(4)}.partial")
    try:
        os.link(target, kept)
    except OSError:
        return None
    return kept


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[tuple[Path, Path]]:
    """(the file to replace, a hidden temporary path beside it), the temporary removed when the block ends."""
    path = followed(path)
    if path.exists() and not path.is_file():  # a rename would replace a folder's entry, or a device (/dev/null)
        raise PrunefxError(f"cannot write {printable(str(path))}: it is {'a folder' if path.is_dir() else 'not a regular file'}")
    made = missing_folders(path.parent)
    make_folder(path.parent, writing=path)
    try:
        _remove_killed_writers(path)
        temporary = path.with_name(f".{hidden_stem(path)}.{writer_tag()}-{secrets.token_hex(4)}.partial")
        try:
            temporary.touch(exist_ok=False)  # not mkstemp: its 0600 would become the file's mode, not the user's umask
        except OSError as error:
            raise _refusal(path, path.parent, error) from None
        if path.is_file():  # the file replaced keeps its mode: a private file stays private
            shutil.copymode(path, temporary)
        try:
            yield path, temporary
        finally:
            temporary.unlink(missing_ok=True)
    except BaseException:  # nothing written: the folders made for it go too, where nothing else came into them
        remove_empty_folders(made)
        raise


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and its parents that do not exist (what making it makes), deepest first: up to the first that is
    there (its parents are too)."""
    return list(itertools.takewhile(lambda missing: not missing.exists(), (folder, *folder.parents)))


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove `folders` (deepest first) while each is empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


# A target these refuse is the caller's to change (another path, permissions): a PrunefxError, not an OSError.
_REFUSED_TARGETS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST, errno.ENOTDIR}


def make_folder(folder: Path, *, writing: Path | None = None) -> None:
    """`folder` and its parents made where missing, to write `writing` (the folder itself by default). A path
    that cannot be one is said in one line (PrunefxError): which part is a file or a link to nothing, or what
    the system refused (permissions, a read-only file system); other errors (a full disk) go on as OSErrors."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _refusal(writing or folder, folder, error) from None


def _refusal(path: Path, folder: Path, error: OSError) -> Exception:
    if error.errno not in _REFUSED_TARGETS:
        return OSError(error.errno, error.strerror, str(path))
    blocking = next((part for part in reversed((folder, *folder.parents))
                     if part.exists() and not part.is_dir() or part.is_symlink() and not part.exists()), None)
    why = (f"{printable(str(blocking))} is {'a link to nothing' if not blocking.exists() else 'not a folder'}"
           if blocking is not None else f"{error.strerror} ({printable(str(folder))})")
    return PrunefxError(f"cannot write {printable(str(path))}: {why}")


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """An OSError of the hidden temporary file told as one of `path`, the file the caller asked for (same type)."""
    try:
        yield
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None


def hidden_stem(path: Path) -> str:
    """The start of a hidden temporary name beside `path` (a file's, or a run's staging folder): `path`'s name,
    cut where its own length would take the temporary one past what a file system allows (255 bytes): the write
    of a name that fits must not fail."""
    return cut_name(path.name, _NAME_ROOM)


def cut_name(name: str, room: int) -> str:
    """The first `room` bytes of `name` as the file system stores it, no character cut in two."""
    return os.fsencode(name)[:room].decode(errors="ignore")


def sync_file(path: Path) -> None:
    """`path`'s data made durable (written and flushed by whoever wrote it)."""
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def sync_folder(folder: Path) -> None:
    """A folder's entries (a rename into it) made durable; a file system that cannot sync a folder is left be."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # EINVAL on file systems that do not sync folders
        pass
    finally:
        os.close(descriptor)


def _remove_killed_writers(path: Path) -> None:
    """The temporary files of earlier writes of `path` whose process is gone (killed outright: SIGKILL, out of
    memory), each as large as the file, and the folders such a write made beside its temporary file (named after
    it: quantize_static_file's private copy of its source). A running writer's stay."""
    pattern = re.compile(re.escape(f".{hidden_stem(path)}.") + WRITER + r"-[0-9a-f]{8}\.partial(\..+)?")
    for entry in path.parent.iterdir():
        found = pattern.fullmatch(entry.name)
        if found and writer_gone(found.group(1), int(found.group(2)), entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


# This process as the names of what it writes say it: its host (a digest of the hostname) and its pid. A pid alone
# says nothing of a writer on another host (a cache on NFS, containers sharing a mount): its live file looked stale.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
WRITER = r"(?:([0-9a-f]{8})-)?(\d+)"  # a writer tag in a name: (host, pid); names from before hosts count as this host's
STALE_SECONDS = 24 * 3600  # another host's leftover this old is a killed writer's: no write takes a day


def writer_tag() -> str:
    return f"{_HOST}-{os.getpid()}"


def writer_gone(host: str | None, pid: int, entry: Path) -> bool:
    """Whether the writer a leftover's name tags is gone: this host's when its process has ended, another host's
    once the leftover is a day old."""
    if host is None or host == _HOST:
        return not process_running(pid)
    try:
        return time.time() - entry.lstat().st_mtime > STALE_SECONDS
    except OSError:  # removed meanwhile
        return False


def process_running(pid: int) -> bool:
    """Whether process `pid` exists (another user's counts): a leftover of a running writer is not stale."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def file_path(path: str | os.PathLike) -> Path:
    """The path of a file to write, as the caller gave it. Text ending in a separator names a folder: open()
    refuses it, and Path() would drop the separator and write a file of the folder's name."""
    if isinstance(path, str) and path.endswith(("/", os.sep)):
        raise PrunefxError(f"cannot write {printable(path)}: it names a folder (it ends in '/'); give the file's path")
    return Path(path)


def followed(path: Path) -> Path:
    """`path`, or for a link the file it names: a write replaces that file and leaves the link, as open() does
    (a rename onto the link would turn it into a file and leave the linked one stale)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def write_whole(path: Path, data: bytes | str) -> None:
    """`data` written to `path` through `replaced_whole`."""
    with replaced_whole(path) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
