"""The ``universal-neurons`` console script: one subcommand per pipeline stage.

Errors a user can act on end the command with one line on stderr: bad input
(``UserError``/``ValueError``, exit 2) and failed file-system operations (``OSError``:
full disk, permissions, read-only file system, a file where a folder belongs..., and
torch/safetensors write errors caused by a full disk; exit 1), each naming the path.
``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from universal_neurons import __version__
from universal_neurons.commands import COMMANDS
from universal_neurons.errors import UserError

OUTPUT_DIRS: dict[str, tuple[str, ...]] = {
    "correlate": ("out",), "stats": ("out",), "weights": ("out",), "explain": ("out",),
    "entropy": ("out",), "attention": ("out",), "properties": ("out", "_run_positional"),
    "families": ("out", "_run_positional"), "report": ("out", "_run_positional"), "tokenize": ("out",),
}
"""Subcommand -> the argument naming the folder it writes (the first one given), checked
before it runs: writable, not a file, ``outputs.MIN_FREE_BYTES`` free (correlate also
checks its own estimate once models are loaded)."""

_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another output directory",
    errno.EDQUOT: "the disk quota is exhausted: free some space or choose another output "
                  "directory",
    errno.EACCES: "check its permissions or choose another output directory",
    errno.EPERM: "check its permissions or choose another output directory",
    errno.EROFS: "the file system is read-only: choose another output directory",
    errno.EEXIST: "it already exists: remove it or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder, not a file: choose another path",
    errno.ENOENT: "check the path",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The console script's parser. ``only``: add the options of that subcommand alone (the
    others are listed with their one-line help), so ``universal-neurons X`` imports only
    what X's options are defined in (its stage config)."""
    parser = argparse.ArgumentParser(
        prog="universal-neurons",
        description="Find and explain universal neurons: MLP neurons that fire on the same "
        "inputs in language models trained from different seeds (Gurnee et al. 2024).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for path in COMMANDS:
        mod = importlib.import_module(path)
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if only is None or only == mod.NAME:
            mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def os_error_message(e: OSError) -> str:
    """One line for a failed file-system operation: the path, what went wrong, the fix."""
    what = e.strerror or str(e)
    if e.filename is not None:
        what = f"{e.filename}: {what}"
        if e.filename2 is not None:
            what = f"{e.filename} -> {e.filename2}: {e.strerror or e}"
    hint = _OS_HINTS.get(e.errno or 0)
    return what + (f"; {hint}" if hint else "")


def disk_full_message(e: BaseException) -> str | None:
    """One line for a torch/safetensors/pyarrow write error caused by a full disk, else None."""
    from universal_neurons.rundir import DISK_FULL_HINTS

    first = (str(e).strip().splitlines() or [""])[0][:160]
    if isinstance(e, (RuntimeError, OSError)) or type(e).__name__ == "SafetensorError":
        if any(h in first.lower() for h in DISK_FULL_HINTS):
            return (f"writing an output failed ({type(e).__name__}: {first}); the disk is "
                    "probably full: free some space or choose another output directory")
    return None


def _preflight(args: argparse.Namespace) -> None:
    from universal_neurons.outputs import MIN_FREE_BYTES
    from universal_neurons.rundir import check_output_dir

    for attr in OUTPUT_DIRS.get(args.command, ()):
        if getattr(args, attr, None):
            option = "RUN" if attr in ("run", "_run_positional") else f"--{attr}"
            check_output_dir(getattr(args, attr), MIN_FREE_BYTES, option=option)
            return


def _command_name(argv: list[str]) -> str:
    """The subcommand named in ``argv`` ("" if none): the first word not an option."""
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_command_name(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "httpx", "huggingface_hub", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.command is None:
        parser.print_help()
        return 0
    prefix = f"universal-neurons {args.command}: error:"
    try:
        _preflight(args)
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError) as e:
        if args.debug:
            raise
        print(f"{prefix} {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if args.debug:
            raise
        message = (os_error_message(e) if e.errno is not None
                   else disk_full_message(e) or (str(e).strip().splitlines() or [repr(e)])[0])
        print(f"{prefix} {message}", file=sys.stderr)
        return 2 if isinstance(e, FileNotFoundError) else 1
    except Exception as e:
        disk_full = disk_full_message(e)
        if args.debug or disk_full is None:
            raise
        print(f"{prefix} {disk_full}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
