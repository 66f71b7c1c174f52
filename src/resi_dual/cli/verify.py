"""`resi-dual verify STORE …`: the full integrity check of stores (reads every byte).

Checks the manifest against ``plan.json`` and the chunks (keys, model spec, split, sample counts),
that ``composition.json`` and ``readout.safetensors`` are present and readable, and every chunk's
header, size, sha256 and data hash. A store that fails is named with the file and how to repair it.
"""

from __future__ import annotations

import argparse

HELP = "check stores completely: manifest vs plan and chunks, every chunk's sha256; names the bad file and the repair"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stores", nargs="+", help="store directories written by `resi-dual encode`")


def run(args: argparse.Namespace) -> int:
    from resi_dual.store.integrity import verify_store

    for path in args.stores:
        s = verify_store(path)
        print(f"{s['store']}: ok — {s['chunks']} chunks, {s['samples']} samples, {s['bytes']:,} bytes checked")
    return 0
