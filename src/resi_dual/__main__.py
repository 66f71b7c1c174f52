"""`python -m resi_dual ...` (also the entry point for `torchrun -m resi_dual encode ...`)."""

from resi_dual.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
