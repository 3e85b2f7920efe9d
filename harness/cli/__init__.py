"""The edgebench command: thin over the library; errors become one line and an exit code.

Exit codes: 0 pass, 1 a gate failed, 2 bad input or setup error, 3 an internal error (a bug in edgebench:
pytest's code for the same, so a nightly job tells a crash from a regression). Tracebacks only with --debug.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Annotated

import typer

from ..errors import EdgebenchError
from .capacity import register as register_capacity
from .interleave import register as register_interleave
from .run import register

# rich_markup_mode=None: plain click help. Typer's rich panels print '<bool>' after every flag
# (--quick, --help), as if it took a value.
app = typer.Typer(
    name="edgebench",
    help="Deploy CV models to a device lab, measure latency, parity and robustness, gate releases.",
    epilog="Exit codes: 0 pass, 1 a gate failed, 2 bad input or a setup error, 3 an internal error (a bug).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _global_flags(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show a traceback with an error (anywhere on the line; EDGEBENCH_DEBUG=1).")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step (anywhere on the line).")] = False,
) -> None:
    """Listed for --help; main() reads these flags wherever they are on the line and removes them first."""


register(app)
register_capacity(app)
register_interleave(app)


def _register_lab() -> None:
    try:
        from .lab import devices_app, lab_app
    except ImportError:  # the SSH lab commands arrive with their module
        return
    app.add_typer(lab_app, name="lab", help="Start and stop a loopback lab of real OpenSSH servers.")
    app.add_typer(devices_app, name="devices", help="Check the health of a lab's devices.")


_register_lab()


def _usage_line(exc: Exception) -> str:
    """A command-line usage error as one line that says where to look for the right spelling."""
    format_message = getattr(exc, "format_message", None)
    text = format_message() if callable(format_message) else str(exc)
    text = " ".join(str(text).split()).replace("Value error, ", "").rstrip(".")
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "edgebench"
    return f"{text}; fix: see '{command} --help'"


INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT
INTERNAL_ERROR = 3  # pytest's code for its own internal error; 1 stays "a gate failed"


def _internal_error_line(exc: Exception) -> str:
    """An unexpected exception as one line: what, where in edgebench, and what to do."""
    frames = traceback.extract_tb(exc.__traceback__)
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ours = [f for f in frames if os.path.abspath(f.filename).startswith(package + os.sep)] or frames
    # The innermost frame of edgebench's own code: where a library was called wrongly, not the library.
    where = f" at {os.path.relpath(ours[-1].filename, os.path.dirname(package))}:{ours[-1].lineno}" if ours else ""
    text = " ".join(str(exc).split()) or "(no message)"
    return (
        f"internal error: {type(exc).__name__}: {text}{where}; this is a bug in edgebench, not in the input "
        "(a run it had started is marked 'error'); fix: rerun with --debug for the traceback and report it"
    )


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    # --debug and --verbose are global: accepted anywhere on the line.
    debug = "--debug" in args or os.environ.get("EDGEBENCH_DEBUG") == "1"
    verbose = "--verbose" in args or "-v" in args
    args = [a for a in args if a not in ("--debug", "--verbose", "-v")]
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "nncf"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not args:
        args = ["--help"]
    try:
        result = app(args=args, standalone_mode=False, prog_name="edgebench")
    except EdgebenchError as exc:
        if debug:
            raise
        print(f"edgebench: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        print("edgebench: aborted", file=sys.stderr)
        return 130
    # typer >= 0.20 carries its own copy of click, whose usage errors derive from TyperException.
    except typer.TyperException as exc:
        if debug:
            raise
        print(f"edgebench: error: {_usage_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not the user's input: CI must not read it as a failed gate
        if debug:
            raise
        print(f"edgebench: {_internal_error_line(exc)}", file=sys.stderr)
        return INTERNAL_ERROR
    code = int(result or 0)
    if code == INTERRUPTED:  # typer turns Ctrl-C into this code; a started run is marked 'interrupted' by then
        print("edgebench: interrupted", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
