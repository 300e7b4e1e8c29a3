"""The `prunefx` command line. Each sub-command lives in prunefx/cli/commands/<name>.py.

Deliberate errors (bad model reference, malformed shape or option, missing, corrupt or hostile file, an
output that cannot be written, a model that will not export) print one line to stderr and exit with
status 2; never a traceback. An unexpected error prints one line too (exit 3), and the traceback only
with PRUNEFX_DEBUG=1. Ctrl-C exits 130, SIGTERM 143 and SIGHUP 129, each with one line; all unwind through
the staged outputs (prunefx/output.py), so nothing partial is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import logging
import sys
import warnings
from typing import Any

# Only modules that import no torch up here, and in the flags (prunefx/cli/arguments/): `prunefx CMD --help` and
# a mistyped argument answer at once. The rest (prunefx.graph, which takes torch; the command) once the
# arguments are read.
from prunefx import standard_error, standard_output
from prunefx.cli import flags, signal_handlers
from prunefx.cli.commands import COMMANDS, Command
from prunefx.interrupts import HungUp, Terminated, published, raise_if_interrupted

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_HUNG_UP = 129  # 128 + SIGHUP
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what `prunefx inspect X | head -1` ends with, as other tools do
# OSErrors that say what is wrong with a path the user typed (a name over 255 bytes, a loop of links).
_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ELOOP}


def _model_arguments(parser: argparse.ArgumentParser, *, onnx_allowed: bool = False) -> None:
    what = "torchvision:NAME, timm:NAME, prunefx:NAME, path/to/file.py:factory or a saved .pt2"
    parser.add_argument("model", help=what + (" or an .onnx file" if onnx_allowed else ""))
    parser.add_argument("--weights", help="state dict (.pth/.pt) to load into the model")
    parser.add_argument("--input-shape", help="example input shape, e.g. 1x3x224x224 (default: the model's)"
                        + ("; an .onnx file's inputs: one shape each, comma-separated" if onnx_allowed else ""))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Every command's parser; given the command line, only the command it names gets its arguments, which is
    all argparse reads."""
    parser = _Parser(prog="prunefx", description="Make vision models smaller and faster.")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="count", default=0,
                          help="say what each pass does (-v), and the details (-vv)")
    loudness.add_argument("-q", "--quiet", action="store_true", help="errors only (progress bars stay)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    named = _named_command(argv)
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        if argv is None or command is named:
            _command_arguments(sub, command)
    parser.commands = commands.choices  # an argument the command does not take is its error (main)
    return parser


def _named_command(argv: list[str]) -> Command | None:
    """The command argparse will take: the first word that is not an option (the global ones take no value)."""
    first_word = next((word for word in argv or () if not word.startswith("-")), None)
    return next((command for command in COMMANDS if command.name == first_word), None)


def _command_arguments(parser: argparse.ArgumentParser, command: Command) -> None:
    if command.takes_model:
        _model_arguments(parser, onnx_allowed=command.onnx_allowed)
    command.arguments().add_arguments(parser)
    parser.set_defaults(handler=command.run)  # its module (torch, seconds) imported once the arguments are read


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (`prunefx CMD: error: ...`), like every other error."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {_one_line(message)}\n")


# An error line quotes names and values from the user's files; a line of a label file can be 10,000 columns.
MAX_ERROR_CHARS = 1000


def _one_line(text: str) -> str:
    line = " ".join(_printable(part) for part in str(text).split())
    return line if len(line) <= MAX_ERROR_CHARS else line[:MAX_ERROR_CHARS] + " [...]"


def _printable(word: str) -> str:
    if word.isprintable():  # an argparse error about a plain word needs no import of prunefx.graph
        return word
    from prunefx.graph.errors import printable
    return printable(word)


_OWN_PROCESS = False  # whether the process is the command's (entry_point), not a Python program calling main()


def entry_point() -> int:
    """The `prunefx` command (and `python -m prunefx`): main(), then the objects left are frozen out of the
    cyclic collector. The interpreter's last collections at exit walk every object torch, the exporters
    and the model left (1 to 2 s after a ViT-L); none of them holds anything that must be finalised."""
    from prunefx.data.worker_limits import raise_open_file_limit
    raise_open_file_limit()  # the process is the command's: room for data workers under a soft limit of 1024
    from prunefx.graph.debug_mode import debug_requested
    global _OWN_PROCESS
    _OWN_PROCESS = True  # process-wide settings are the command's to make (ONNX Runtime's log level)
    if not debug_requested():
        warnings.filterwarnings("ignore")  # also those of finalisers and exit handlers, after main() returned
    try:
        status = main()
    except KeyboardInterrupt:  # before the command's own handlers (its imports, the parser): still one line
        _report("prunefx: interrupted; no output was written")
        return EXIT_INTERRUPTED
    gc.freeze()
    return status


def _quiet_onnxruntime() -> None:
    """ONNX Runtime's own log at errors only, for the sessions of tools that take no options from prunefx
    (its quantization's calibration): the process's setting, so the command's, never the library's."""
    import onnxruntime as ort

    from prunefx.runtime.ort.options import LOG_SEVERITY_ERROR
    ort.set_default_logger_severity(LOG_SEVERITY_ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # said by the command's parser, "prunefx bench: error: ...", as its other argument errors
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exit_:  # --help (0) or a bad argument (2, its one line already printed)
        return int(exit_.code or 0)
    args.given = flags.given_destinations(parser, argv)  # flags a run refuses when it would not read them
    error_modes = _never_raise_on_encoding()
    try:
        with standard_error.dropped_on_failure():  # a reader of stderr gone: the run finishes, unheard
            return _run_with_signals(args, argv)
    finally:  # a caller in Python gets its streams back as they were
        _restore_error_modes(error_modes)


def _run_with_signals(args: argparse.Namespace, argv: list[str]) -> int:
    """The run with SIGINT, SIGTERM and SIGHUP raised as exceptions inside it; after it, a caller in Python gets
    its own handlers back, and the command's own process exits at once with the run's status on such a signal:
    the interpreter's teardown after a large model takes seconds, and the outputs and their line are out."""
    previous = signal_handlers.install()
    status = EXIT_INTERNAL_ERROR
    try:
        status = _run(args, argv)
        return status
    finally:
        if _OWN_PROCESS and previous is not None:
            signal_handlers.exit_on(previous, status)
        else:
            signal_handlers.restore(previous)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from prunefx.environment_faults import environment_fault, unspellable_arguments
    from prunefx.graph.debug_mode import debug_requested
    from prunefx.graph.errors import PrunefxError, first_line
    from prunefx.graph.torch_quiet import WithoutTorchPrints
    from prunefx.output_paths import check_outputs_spare_inputs

    unspellable = unspellable_arguments(argv)
    if unspellable:
        _report(f"prunefx {args.command}: error: {unspellable}")
        return EXIT_USER_ERROR
    debug = debug_requested()
    if not debug and _OWN_PROCESS:  # main() called from Python leaves its host's ONNX Runtime log level alone
        _quiet_onnxruntime()
    # torch prints the partial graph of a model it could not capture straight to stderr, under the one line
    # (`2>&-` leaves none: nothing to filter, and a wrapper would hide that there is none)
    filtering = not debug and sys.stderr is not None
    quiet = contextlib.redirect_stderr(WithoutTorchPrints(sys.stderr)) if filtering else contextlib.nullcontext()
    unraisable = sys.unraisablehook
    if not debug:  # "Exception ignored in ..." from finalisers hit by an interrupt: noise, not news
        sys.unraisablehook = lambda _: None
    stdout = None
    try:
        with quiet, _logging_to_stderr(args), warnings.catch_warnings(), standard_output.watched_stdout() as stdout:
            if not debug:
                warnings.filterwarnings("ignore")  # torch.export/onnx warnings are noise for CLI users
            check_outputs_spare_inputs(args)
            # --mean/--std refused before any work; their module imports torch, so only where they are given
            if getattr(args, "mean", None) is not None or getattr(args, "std", None) is not None:
                from prunefx.image_statistics import given_statistics

                given_statistics(args, getattr(args, "calibrate", None) or getattr(args, "data", None))
            status = int(args.handler(args) or 0)
            if stdout is not None:  # a full device or a closed pipe is said here, not at the interpreter's exit
                stdout.flush()
        raise_if_interrupted()  # an interrupt some library swallowed still ends the run as interrupted
        return status
    except PrunefxError as error:
        _report(f"prunefx {args.command}: error: {_one_line(error)}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt as interrupt:
        what, status = _interruption(interrupt)
        notes = _notes(interrupt)
        written = published()  # demo measures after it wrote its folder, for one
        outcome = f"after writing {', '.join(map(_printable, written))}" if written else "no output was written"
        _report(f"prunefx {args.command}: {what}; {outcome}{notes}")
        return status
    except SystemExit as exit_:  # raised by user code we ran (a model factory), never by prunefx itself
        _report(f"prunefx {args.command}: error: the model code called sys.exit({exit_.code!r})")
        return EXIT_USER_ERROR
    except Exception as error:
        if isinstance(error, OSError) and error.errno in _PATH_ERRNOS:  # a path the user gave, not a bug
            _report(f"prunefx {args.command}: error: {_one_line(f'{error.strerror}: {error.filename}')}{_notes(error)}")
            return EXIT_USER_ERROR
        if stdout is not None and stdout.error is error:  # standard output's, not a file's
            standard_output.silence()
            if isinstance(error, BrokenPipeError) or standard_output.reader_gone():
                return EXIT_BROKEN_PIPE  # the reader took what it wanted: nothing to say, as other tools
            _report(f"prunefx {args.command}: error: cannot write standard output: {error.strerror or error}")
            return EXIT_USER_ERROR
        if debug:
            raise
        fault = environment_fault(error)  # a full disk, a limit, memory, the locale: not prunefx's bug
        if fault:
            _report(f"prunefx {args.command}: error: {_one_line(fault)}{_notes(error)}")
            return EXIT_USER_ERROR
        _report(f"prunefx {args.command}: internal error: {_one_line(first_line(error))} "
                f"(rerun with PRUNEFX_DEBUG=1 for the traceback, and please report it){_notes(error)}")
        return EXIT_INTERNAL_ERROR
    finally:
        sys.unraisablehook = unraisable


def _notes(error: BaseException) -> str:
    """What the code raising `error` added to it (where a trained model was kept), for the end of its line."""
    return "".join(f"; {_one_line(note)}" for note in getattr(error, "__notes__", ()))


def _never_raise_on_encoding() -> list[tuple[Any, str]]:
    """A path the terminal's encoding cannot spell is written with escapes, never raised on mid-run.
    Returns each stream reconfigured with its previous error mode."""
    previous = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            errors = stream.errors
            stream.reconfigure(errors="backslashreplace")
            previous.append((stream, errors))
    return previous


def _restore_error_modes(previous: list[tuple[Any, str]]) -> None:
    for stream, errors in previous:
        with contextlib.suppress(AttributeError, ValueError):  # closed by the command's output handling
            stream.reconfigure(errors=errors)


def _interruption(interrupt: KeyboardInterrupt) -> tuple[str, int]:
    if isinstance(interrupt, Terminated):
        return "terminated (SIGTERM)", EXIT_TERMINATED
    if isinstance(interrupt, HungUp):
        return "hung up (SIGHUP)", EXIT_HUNG_UP
    return "interrupted", EXIT_INTERRUPTED


@contextlib.contextmanager
def _logging_to_stderr(args):
    """prunefx's log records (logging.getLogger(__name__) in passes and runtime) go to stderr at the level
    -v / -vv / -q ask for: warnings by default. Progress bars are tqdm's, not log records: they stay; off a
    terminal, long work writes a progress line now and then instead (graph/progress.py), unless -q."""
    from prunefx.graph.progress import lines_off_terminal

    level = logging.ERROR if args.quiet else {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logger = logging.getLogger("prunefx")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("prunefx: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        with lines_off_terminal(not args.quiet):
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
