"""Command line entry point `resi-dual`.

Each subcommand lives in its own module ``resi_dual.cli.<name>`` exposing ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy libraries inside ``run`` so
that ``resi-dual --help`` stays fast. A :class:`~resi_dual.errors.ResiDualError` becomes a one-line
``error: …`` on stderr and exit status 2, with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from resi_dual.errors import ResiDualError

#: subcommand name -> module name under resi_dual.cli (in the order shown by --help)
COMMANDS = {
    "trace": "trace",
    "encode": "encode",
    "verify": "verify",
    "analyze": "analyze",
    "similarity": "similarity",
    "zeroshot": "zeroshot",
    "interpret": "interpret",
    "specialize": "specialize",
    "groundtruth": "groundtruth",
    "train": "train",
    "apply": "apply",
    "explain": "explain",
    "locate": "locate",
    "explore": "explore",
    "pretrain-demo": "pretrain_demo",
    "demo": "demo",
    "experiment": "experiment",
}


def add_device_argument(p: argparse.ArgumentParser, default: str | None = "cpu", extra: str = "") -> None:
    """The shared ``--device`` option of the commands that run a model (checked when the command runs)."""
    p.add_argument("--device", default=default, metavar="DEVICE",
                   help="where the model runs: cpu, cuda, cuda:N or mps (default: " + (default or "cpu") + ")"
                        + extra + "; results on disk are CPU tensors either way")


def build_parser() -> argparse.ArgumentParser:
    from resi_dual import __version__

    parser = argparse.ArgumentParser(
        prog="resi-dual",
        description="Residual-unit decomposition, spectral analysis and ResiDual adaptation of vision transformers.",
    )
    parser.add_argument("--version", action="version", version=f"resi-dual {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"resi_dual.cli.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _quiet_library_bars() -> None:
    """transformers draws a bar for every checkpoint load (instant for local files, and once per grid
    cell); it would break up our own progress view. Hub download bars (huggingface_hub) stay."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.disable_progress_bar()


def _file_size_limit_raises() -> None:
    """Under ``ulimit -f`` the kernel kills a writer with SIGXFSZ; ignored, the write fails with
    EFBIG instead, which becomes a one-line error and leaves the temporaries to be cleaned."""
    import signal

    if hasattr(signal, "SIGXFSZ"):
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        except ValueError:  # pragma: no cover - not the main thread (embedded use)
            pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    _quiet_library_bars()
    _file_size_limit_raises()
    try:
        return int(args._run(args) or 0)
    except ResiDualError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only folder, a full disk, a file-size limit, a file where a folder goes
        from resi_dual.files import os_error_line

        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
