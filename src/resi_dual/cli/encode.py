"""`resi-dual encode`: trace a dataset split once into an on-disk store (resumable, distributable).

Run it again after a crash to resume; launch it with ``torchrun --nproc_per_node=K -m resi_dual encode …``
(gloo, CPU or GPU hosts alike) to split the chunks across K processes — the store is the same.
"""

from __future__ import annotations

import argparse
import os

from resi_dual.cli import add_device_argument

HELP = "encode a dataset split through a traced model into an on-disk store (resumable, torchrun-able)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model spec: hf:<id|dir>, open_clip:<arch>[@tag], a short name, or demo")
    p.add_argument("--dataset", required=True,
                   help="dataset spec: folder:<path>, torchvision:<Name>, hf:<id|dir>, animal-mnist, digits, fashion-mnist, textiles")
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    p.add_argument("--out", required=True, help="store directory (created; an existing store of the same job is resumed)")
    p.add_argument("--limit", type=int, default=None,
                   help="encode only N samples: the first N of a class-proportional order, kept in dataset order")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"),
                   help="storage of raw unit encodings (μ, σ and outputs are always float32)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding and preprocessing images")
    p.add_argument("--chunk-rows", type=int, default=1024, help="rows per chunk file (the unit of resumption)")
    p.add_argument("--data-root", default=None, help="where a torchvision: dataset lives (nothing is downloaded)")
    p.add_argument("--class-names", default=None, help="file with one class name per line, for sources without names")
    p.add_argument("--convention", default="paper", choices=("paper", "centred"), help="how LN centring and biases are shared")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed in the manifest) instead of failing")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: torch's; on a busy shared machine 1 is often fastest)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_argument(p, extra="; under torchrun, cuda means cuda:LOCAL_RANK")


def _init_distributed():
    """Join the torchrun process group (gloo) when launched with WORLD_SIZE > 1; returns it or None.

    Call it only after the model is loaded: transformers imports ``torch.distributed.nn`` while loading,
    whose functions take ``group.WORLD`` as a default argument evaluated at import. Imported while the
    group exists, they keep it alive after ``destroy_process_group``, so gloo's worker threads outlive it;
    one still releasing a finished collective at interpreter exit takes the GIL during finalisation and
    the process aborts ("terminate called without an active exception", SIGABRT) after a complete run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist
    import torch.distributed.nn  # noqa: F401 - imported before the group exists, whichever library loads it later

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist


def run(args: argparse.Namespace) -> int:
    import sys

    from resi_dual.data import load_dataset
    from resi_dual.models.loading import load_model, resolve_device
    from resi_dual.store.writer import EncodeConfig, Group, encode_store

    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        import torch

        device = resolve_device(f"cuda:{int(os.environ['LOCAL_RANK']) % max(1, torch.cuda.device_count())}")
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    dataset = load_dataset(args.dataset, args.split, root=args.data_root, class_names=args.class_names)
    model = load_model(args.model, convention=args.convention, device=device)
    dist = _init_distributed()  # after loading: see _init_distributed
    try:
        group = Group()
        cfg = EncodeConfig(limit=args.limit, batch_size=args.batch_size, dtype=args.dtype, chunk_rows=args.chunk_rows,
                           workers=args.workers, skip_bad=args.skip_bad, data_root=args.data_root,
                           progress=not args.no_progress and sys.stderr.isatty())

        def log(msg: str) -> None:
            if group.rank == 0:
                print(msg, file=sys.stderr)

        manifest = encode_store(model, dataset, args.out, cfg, group, log)
        if group.rank == 0:
            t = manifest.timing
            print(f"{args.out}: {manifest.n_samples} samples of {manifest.dataset_name}/{manifest.split} "
                  f"({len(manifest.skipped)} skipped), {len(manifest.chunks)} chunks, {manifest.plan.dtype}; "
                  f"worst decomposition error {manifest.max_trace_error:.1e} traced, "
                  f"{manifest.max_storage_error:.1e} as stored"
                  + (f"; {t['images_per_second']} img/s" if t.get("images_per_second") else ""))
        return 0
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
