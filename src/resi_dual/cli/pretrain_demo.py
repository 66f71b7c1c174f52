"""`resi-dual pretrain-demo`: train the bundled demo vision-language model (see resi_dual.experiments.pretrain)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train the small demo vision-language model on the attribute world against frozen MiniLM text embeddings"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from resi_dual.experiments.pretrain import PretrainConfig as C

    p.add_argument("--out", required=True, type=Path, help="output folder for the checkpoint and its log")
    p.add_argument("--seed", type=int, default=C.seed, help="random seed (default %(default)s)")
    p.add_argument("--world-size", type=int, default=C.world_size, help="pretraining world images (default %(default)s)")
    p.add_argument("--epochs", type=int, default=C.epochs, help="passes over the world (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=C.batch_size)
    p.add_argument("--lr", type=float, default=C.lr, help="Schedule-Free AdamW learning rate (default %(default)s)")
    p.add_argument("--max-minutes", type=float, default=C.max_minutes,
                   help="wall-clock budget; training stops early when spent and saves (default %(default)s)")
    p.add_argument("--log-every", type=int, default=C.log_every,
                   help="steps between log rows (zero-shot on the evaluation subsets; default %(default)s)")
    p.add_argument("--eval-limit", type=int, default=C.eval_limit,
                   help="images per evaluation set at each log row (default %(default)s)")
    p.add_argument("--final-eval-limit", type=int, default=C.final_eval_limit,
                   help="images per evaluation set at the end (default %(default)s)")
    p.add_argument("--threads", type=int, default=C.threads, help="torch threads (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from resi_dual.experiments.pretrain import PretrainConfig, pretrain_demo

    cfg = PretrainConfig(out=args.out, seed=args.seed, world_size=args.world_size, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, max_minutes=args.max_minutes,
                         log_every=args.log_every, eval_limit=args.eval_limit,
                         final_eval_limit=args.final_eval_limit, threads=args.threads)
    info = pretrain_demo(cfg)
    zs = ", ".join(f"{k} {v:.3f}" for k, v in info["final_zero_shot"].items())
    print(f"zero-shot top-1: {zs}; {info['wall_minutes']:.1f} min")
    print(f"checkpoint written to {Path(args.out).resolve()}")
    return 0
