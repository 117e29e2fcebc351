"""The ``cryoalign`` command line: every GUI job, headless.

Each subcommand lives in its own module with ``register(subparsers)`` (adds its parser and
``set_defaults(func=run)``) and ``run(args) -> int``. Modules import the heavy backend
only inside ``run`` so that ``cryoalign --help`` stays fast.

Errors the user can fix (:class:`~napari_cryoalign.errors.InputError`, missing files) are
printed as one line on stderr with exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

from .. import __version__

__all__ = ["main", "build_parser"]

# top-level subcommands, in the order `--help` lists them
_COMMANDS = ("_info", "_simulate", "_pick", "_align", "_cluster", "_workflow", "_batch", "_pose", "_markers", "_export", "_demo",
             "_gui")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryoalign",
        description=(
            "napari-cryoalign: cryo-ET particle picking, subtomogram alignment, clustering, "
            "marker/deformation estimation and pose inference, headless. "
            "Run `cryoalign gui` for the napari interface."
        ),
    )
    parser.add_argument("--version", action="version", version=f"napari-cryoalign {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, only errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print informational log messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cryoalign`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    if argv is None:  # the console script, a batch process of its own (not a test calling main())
        from ..backend._malloc import keep_freed_memory

        keep_freed_memory()
    from ..errors import CryoAlignError, JobCancelled

    try:
        return int(args.func(args) or 0)
    except JobCancelled:
        print("cryoalign: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("cryoalign: interrupted", file=sys.stderr)
        return 130
    except (CryoAlignError, FileNotFoundError, IsADirectoryError, PermissionError, FileExistsError) as exc:
        if args.debug:
            raise
        print(f"cryoalign {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
