"""`resi-dual experiment NAME --config GRID.toml --out DIR`: one of the paper's four experiments over a grid."""

from __future__ import annotations

HELP = "run one of the paper's experiments (intrinsic-dim, similarity, specialization, adaptation) over a grid, resumably"


def add_arguments(parser) -> None:
    from resi_dual.experiments.runners import EXPERIMENTS
    from resi_dual.store.disk import STORE_DTYPES

    parser.add_argument("name", choices=EXPERIMENTS, help="which experiment")
    parser.add_argument("--config", required=True, help="grid TOML (see configs/offline.toml, configs/paper.toml)")
    parser.add_argument("--out", required=True, help="output folder: cells/ (the cache) and <name>/ (tables, figures)")
    parser.add_argument("--status", action="store_true", help="only show how many cells are done and left")
    parser.add_argument("--store-dtype", default=None, choices=STORE_DTYPES,
                        help="storage of the raw encodings in the stores (float16 halves the disk); "
                             "default: the grid's [grid] store-dtype, else float32")
    parser.add_argument("--models", default="", help="comma-separated model names: run only these (split a grid across GPUs)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding images for the stores")
    parser.add_argument("--encode-commands", type=int, default=0, metavar="K",
                        help="only print `torchrun --nproc_per_node=K -m resi_dual encode …` for the missing stores")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quiet", action="store_true", help="no progress view")
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="where models run: cpu, cuda, cuda:N or mps (default: the grid's [grid] device, else cpu); "
                             "not part of the cache keys, results on disk are CPU tensors")


def _check_datasets(config, source: str) -> None:
    """Every dataset entry checked before the first cell runs, so a typo fails now and names its entry."""
    from resi_dual.data.specs import check_dataset_spec
    from resi_dual.errors import ResiDualError

    entries = [(f"datasets[{i}]", d) for i, d in enumerate(config.datasets)] + [("reference", config.reference)]
    for where, entry in entries:
        try:
            check_dataset_spec(entry.spec, entry.root)
        except ResiDualError as e:
            raise ResiDualError(f"{source}: {where} ({entry.name}): {e}") from None


def run(args) -> int:
    import json

    import torch

    from resi_dual.experiments.config import load_config
    from resi_dual.report.experiments import run_experiment

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    if not (args.status or args.encode_commands):
        _check_datasets(config, args.config)
    summary = run_experiment(args.name, config, args.out, progress=not args.quiet, status_only=args.status,
                             store_dtype=args.store_dtype, workers=args.workers,
                             models=[m.strip() for m in args.models.split(",") if m.strip()] or None,
                             print_encode=args.encode_commands, device=args.device)
    if not args.encode_commands:
        print(json.dumps(summary))
    return 0
