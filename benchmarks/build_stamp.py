"""Which code filled a benchmark build folder, so that a resumed run never mixes results of two versions.

run_all.py's build/bench/ keeps what the benchmarks resume from (trained baselines, finished runs). A run of
several hours can be resumed (`--resume`) in a later session; its figures are one measurement only if the
code that made the cached parts is the code that makes the rest. The stamp is a digest of the files that decide
a figure (the library, the benchmark scripts, the pinned dependencies), read from disk so that uncommitted
edits count; the folder's stamp is written when it is emptied and checked before a resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAMP_NAME = "code_stamp.json"
# What decides a figure: the library's layers, the benchmark scripts, the dependency pins.
DECIDING = ("prunefx", "runtime", "passes", "graph", "benchmarks", "pyproject.toml", "constraints.txt")
# Benchmark files that only say what runs where: editing them leaves every cached result valid.
ORCHESTRATION = {"benchmarks/run_all.py", "benchmarks/published.py", "benchmarks/build_stamp.py"}


class StampMismatch(Exception):
    """The folder was filled by other code, or by code this script cannot name."""


def deciding_files(repo: Path = REPO) -> list[str]:
    """Tracked files under DECIDING, results and orchestration left out, sorted."""
    listed = subprocess.run(["git", "ls-files", "-z", "--", *DECIDING], cwd=repo, capture_output=True,
                            check=True).stdout.decode().split("\0")
    return sorted(path for path in listed if path and path not in ORCHESTRATION
                  and not path.startswith(("benchmarks/results/", "benchmarks/gpu_check/")))


def code_digest(repo: Path = REPO) -> str:
    """SHA-256 over each deciding file's path and its bytes on disk (a deleted one counts as gone)."""
    return digest_of(deciding_files(repo), repo)


def digest_of(paths: list[str], repo: Path = REPO) -> str:
    """code_digest over the files `paths` names: where there is no git to list them (the GPU machine's copy)."""
    digest = hashlib.sha256()
    for path in paths:
        file = repo / path
        digest.update(path.encode() + b"\0")
        digest.update(file.read_bytes() if file.is_file() else b"<deleted>")
        digest.update(b"\0")
    return digest.hexdigest()


def write_stamp(folder: Path, repo: Path = REPO) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{STAMP_NAME}.partial"  # whole or not at all: `run_all --resume` trusts the stamp
    partial.write_text(json.dumps({"code": code_digest(repo)}) + "\n")
    os.replace(partial, folder / STAMP_NAME)


def check_stamp(folder: Path, repo: Path = REPO) -> None:
    """Raise StampMismatch unless `folder` is empty or was filled by the code on disk now; stamp an empty one."""
    stamp = folder / STAMP_NAME
    if not stamp.is_file():
        if folder.is_dir() and any(folder.iterdir()):
            raise StampMismatch(f"{folder} holds results of unknown code (no {STAMP_NAME}): "
                                "rerun without --resume")
        write_stamp(folder, repo)
        return
    recorded = json.loads(stamp.read_text()).get("code")
    if recorded != code_digest(repo):
        raise StampMismatch(f"{folder} was filled by other code than this checkout's (library, benchmark "
                            "scripts or pins changed since): rerun without --resume")
