"""Every command's --help, and a mistyped flag, answer without importing torch, onnx, onnxruntime or numpy: the
flags are made of torch-free declarations (prunefx/cli/arguments/, prunefx/cli/flags.py, the passes' config
classes, the backends' facts), and a command's module is imported only to run it. The declarations are the
very ones the heavy modules use."""

from __future__ import annotations

import json
import subprocess
import sys

from prunefx.cli import EXIT_USER_ERROR
from prunefx.cli.commands import COMMANDS

HEAVY = ("torch", "onnx", "onnxruntime", "numpy")

# One process for every command: each command line parsed in turn, and what had been imported after it.
PROBE = """
import contextlib, io, json, sys
from prunefx.cli import build_parser

seen = []
for argv in {argvs!r}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser(argv).parse_args(argv)
            status = None
        except SystemExit as exit_:
            status = exit_.code
    seen.append([argv, status, sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))])
print(json.dumps(seen))
"""


def test_every_commands_help_and_a_bad_flag_import_nothing_heavy():
    argvs = [argv for command in COMMANDS for argv in ([command.name, "--help"], [command.name, "--bogus"])]
    done = subprocess.run([sys.executable, "-c", PROBE.format(argvs=argvs, heavy=HEAVY)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for argv, status, heavy in json.loads(done.stdout):
        assert status == (0 if argv[-1] == "--help" else EXIT_USER_ERROR), (argv, status)
        assert heavy == [], f"`prunefx {' '.join(argv)}` imported {heavy}"


def test_the_backends_the_flags_list_are_the_registered_ones():
    """--backend and --precision are made of the shipped backends' facts (runtime/backends/facts.py), which each
    backend's class derives from; a backend's per-layer profile is stated there as its class implements it."""
    from prunefx.runtime import backends
    from prunefx.runtime.backends.base import Backend
    from prunefx.runtime.backends.facts import SHIPPED

    assert sorted(facts.name for facts in SHIPPED) == sorted(backend.name for backend in backends.backends())
    for facts in SHIPPED:
        backend = backends.get(facts.name)
        assert isinstance(backend, type(facts)), facts.name
        assert facts.profiles == (type(backend).profile is not Backend.profile), facts.name


def test_check_offers_the_targets_it_knows():
    from prunefx.runtime.check.descriptions import DESCRIPTIONS
    from prunefx.runtime.check.targets import TARGETS

    assert list(TARGETS) == list(DESCRIPTIONS)
    assert all(target.description == DESCRIPTIONS[name] for name, target in TARGETS.items())
