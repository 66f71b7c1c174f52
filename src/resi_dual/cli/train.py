"""`resi-dual train`: fit an adapter (ResiDual, Coarse, baselines) on stores, write metrics and the adapter.

All adapters but ``finetune`` train on per-unit PCA coefficients cached once from the stores: the
frozen backbone is never rerun. Writes ``<out>/<dataset>-<adapter>[-<K>shot]-seed<S>.safetensors``
(the adapter, self-contained: components, means, classifier, basis hash) and a ``.json`` with the
metrics (accuracy on val and test, zero-shot reference, trainable parameters, epochs, time).
"""

from __future__ import annotations

import argparse

from resi_dual.cli import add_device_argument

HELP = "train an adapter (residual, residual-full, coarse, spectral, linear, finetune, zeroshot) or a peer on stores"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from resi_dual.adapters.adapter import VARIANTS
    from resi_dual.adapters.training import PRODUCTS, TrainConfig

    tc = TrainConfig()
    from resi_dual.adapters.peers import PEERS

    p.add_argument("--train", required=True, help="store of the training split")
    p.add_argument("--val", required=True, help="store of the validation split (model selection only uses it)")
    p.add_argument("--test", required=True, help="store of the test split (evaluated once, best checkpoint)")
    p.add_argument("--adapter", required=True, choices=VARIANTS + PEERS,
                   help="adapter variant, or a peer on the cached embeddings (linear-probe, lp++, tip-adapter, "
                        "tip-adapter-f, clip-adapter, coop — coop learns a prompt context through the model's text "
                        "tower: metrics only, no adapter file)")
    p.add_argument("--basis", default=None,
                   help="reference for the unit PCA bases: a store (PCA fitted on it) or a bases .safetensors file "
                        "(default: the full train store; PCA uses no labels)")
    p.add_argument("--lr", default="sweep",
                   help="learning rate; 'sweep' (default) picks it on validation from the method's grid (4 candidates; "
                        "3 for finetune and lora; lp++ keeps its Lipschitz step sizes), 'auto' runs a range test on train")
    p.add_argument("--shots", type=int, default=None,
                   help="few-shot protocol: K training examples per class and min(K, 4) validation examples per "
                        "class (seeded); nothing else labelled is read (prototypes, early stopping and the lr choice "
                        "included); default all")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, one run each (default 1,2,3 with --shots, else 1)")
    p.add_argument("--epochs", type=int, default=tc.max_epochs, help="maximum epochs (default %(default)s)")
    p.add_argument("--patience", type=int, default=tc.patience, help="early-stopping patience in epochs (default %(default)s)")
    p.add_argument("--batch", type=int, default=tc.batch_size, help="batch size (default %(default)s)")
    p.add_argument("--variance", type=float, default=None, help="explained-variance cut per unit (default: the variant's, 0.9 for residual)")
    p.add_argument("--mean-mode", choices=["drop", "add", "scale"], default=None, help="adapted units' means: drop (paper), add back, scale")
    p.add_argument("--init", choices=["ones", "paper"], default="ones", help="λ init: ones, or 1+N(0,1) as the paper's code")
    p.add_argument("--logit-scale", type=float, default=None,
                   help="temperature of the frozen classifier during training (default: the text tower's; 100 for "
                        "class-mean prototypes, as in `experiment adaptation`)")
    p.add_argument("--data-root", default=None,
                   help="finetune: where the stores' torchvision: dataset lives (default: the folder recorded when "
                        "the stores were encoded)")
    p.add_argument("--products", choices=PRODUCTS, default=tc.products,
                   help="number format of the two large products of each λ step (residual, residual-full, coarse, "
                        "spectral): bfloat16 inputs with float32 accumulation are faster on some CPUs and shift λ "
                        "by ~1e-4 relative; auto times both on the fit's shapes once per machine and takes the "
                        "faster (cached under ~/.cache/resi-dual); validation and test are always float32 "
                        "(default %(default)s)")
    p.add_argument("--out", default="adapters", help="output directory (default ./adapters)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_argument(p, extra="; only finetune reruns the model, the other adapters train on cached "
                                  "coefficients on the CPU")


def _parse_seeds(text: str) -> list[int]:
    from resi_dual.errors import ResiDualError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ResiDualError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ResiDualError("--seeds is empty")
    return seeds


def load_bases(basis: str | None, train, units: list[str], progress: bool = True):
    """UnitBases for ``units``: from a bases file, a reference store, or the train store itself."""
    from pathlib import Path

    from resi_dual import open_store
    from resi_dual.adapters.cache import check_same_model
    from resi_dual.errors import ResiDualError
    from resi_dual.spectral.bases import UnitBases
    from resi_dual.spectral.pca import fit_bases

    if basis is not None and Path(basis).is_file():
        bases = UnitBases.load(basis)
        if not bases.composition.same_model(train.composition):
            raise ResiDualError(f"basis {basis} was fitted on another model ({bases.composition.model_id!r})")
        return bases
    ref = train if basis is None else open_store(basis)
    if ref is not train:
        check_same_model(train, ref, "train and basis stores")
    bases = fit_bases(ref, units=units, progress=progress)
    bases.meta.setdefault("store", str(basis) if basis else "train")
    for k, v in ref.meta.identity().items():
        if k in ("dataset_spec", "split"):
            bases.meta.setdefault(k, v)
    return bases


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from resi_dual import open_store
    from resi_dual.adapters.protocol import check_splits
    from resi_dual.errors import ResiDualError
    from resi_dual.files import ensure_out_dir
    from resi_dual.models.loading import resolve_device

    console = Console(stderr=True)
    device = resolve_device(args.device)
    seeds = _parse_seeds(args.seeds if args.seeds is not None else ("1,2,3" if args.shots else "1"))
    lr = args.lr if args.lr in ("sweep", "auto") else _float(args.lr)
    from resi_dual.adapters.peers import PEERS

    if args.adapter in PEERS and args.lr != "sweep":
        raise ResiDualError(f"--lr is not used by {args.adapter}: each peer sets its own (a sweep on val, the "
                            "Lipschitz bound of LP++, or none); leave --lr out")
    if args.epochs < 1 or args.patience < 1 or args.batch < 1:
        raise ResiDualError("--epochs, --patience and --batch must be at least 1")
    train, val, test = open_store(args.train), open_store(args.val), open_store(args.test)
    check_splits(train, val, test)
    dataset = train.meta.dataset_name or "data"
    out_dir = ensure_out_dir(args.out)
    _summary_path(out_dir, dataset, args.adapter, args.shots).unlink(missing_ok=True)

    if args.adapter in ("finetune", "lora"):
        return _run_on_images(args, train, val, test, seeds, lr, device, dataset, out_dir, console)

    from resi_dual import load_model
    from resi_dual.adapters.protocol import labelled_rows
    from resi_dual.zeroshot import classifier_for_source

    model = load_model(train.meta.model_spec, convention=train.composition.convention)

    def head_for(seed: int):
        """The frozen head of one run: text prompts, or prototypes of the rows this run may read."""
        split = labelled_rows(train, val, args.shots, seed)
        head = classifier_for_source(train, model=model, train_source=train,
                                     train_rows=None if split is None else split.train_rows)
        scale = args.logit_scale if args.logit_scale is not None else head.logit_scale
        if not scale > 0:
            raise ResiDualError("--logit-scale must be positive")
        return head, scale

    if args.adapter in PEERS:
        return _run_peer(args, train, val, test, seeds, head_for, dataset, out_dir, console, model)
    return _run_adapter(args, train, val, test, seeds, lr, head_for, dataset, out_dir, console)


def _run_adapter(args, train, val, test, seeds, lr, head_for, dataset, out_dir, console) -> int:
    """A λ-adapter, linear or zeroshot on cached coefficients, per seed: metrics JSON + adapter file."""
    import json

    from resi_dual import open_store
    from resi_dual.adapters.adapter import AdapterConfig
    from resi_dual.adapters.protocol import train_and_evaluate
    from resi_dual.adapters.training import TrainConfig
    from resi_dual.files import atomic_write

    config = AdapterConfig(args.adapter, variance="preset" if args.variance is None else args.variance,
                           mean_mode=args.mean_mode, init=args.init)
    cfg = config.resolved()
    bases = reference = None
    if cfg["source"] == "units":
        bases = load_bases(args.basis, train, train.composition.select_labels(cfg["units"]), progress=not args.quiet)
    elif cfg["units"] == "output" and args.basis:  # spectral: the output PCA of the reference store
        from resi_dual.adapters.cache import check_same_model

        reference = open_store(args.basis)
        check_same_model(train, reference, "train and basis stores")
    runs = []
    for seed in seeds:
        config.seed = seed
        head, scale = head_for(seed)
        tc = TrainConfig(lr=lr, batch_size=args.batch, max_epochs=args.epochs, patience=args.patience, seed=seed,
                         progress=not args.quiet, products=args.products)
        adapter, metrics = train_and_evaluate(config, train, val, test, head.weights, scale, bases, tc, args.shots,
                                              reference, logit_bias=head.logit_bias if head.kind == "text" else 0.0)
        stem = out_dir / _stem(dataset, args.adapter, args.shots, seed)
        record = metrics.to_dict()
        saved = str(adapter.save(stem.with_suffix(".safetensors"), extra={"metrics": {
            k: record[k] for k in ("accuracy", "epochs", "best_epoch", "lr", "shots", "seed")}}))
        metrics = metrics.with_details(adapter_file=saved, classifier_kind=head.kind, logit_scale=scale)
        atomic_write(stem.with_suffix(".json"), json.dumps(metrics.to_dict(), indent=1))
        runs.append(metrics)
        console.print(f"{args.adapter} seed {seed}: {metrics.trainable_parameters} parameters, "
                      f"val {metrics.val_accuracy:.4f}  test {metrics.test_accuracy:.4f}  "
                      f"(zero-shot test {metrics.zeroshot_test:.4f}), "
                      f"lr {metrics.lr:g}, {metrics.epochs} epochs, {metrics.seconds['total']:.1f} s "
                      f"-> {saved}" + (f"  [{metrics.note}]" if metrics.note else ""))
    _write_summary(out_dir, dataset, args.adapter, args.shots, runs, console)
    return 0


def _run_on_images(args, train, val, test, seeds, lr, device, dataset, out_dir, console) -> int:
    """finetune or lora, which rerun the backbone on the images, per seed: metrics JSON."""
    import json

    from resi_dual.adapters.finetune import finetune_from_stores
    from resi_dual.files import atomic_write

    runs = []
    for seed in seeds:
        stem = out_dir / _stem(dataset, args.adapter, args.shots, seed)
        metrics = finetune_from_stores(train, val, test, shots=args.shots, seed=seed, lr=lr,
                                       epochs=args.epochs, patience=args.patience, batch_size=args.batch,
                                       progress=not args.quiet, weights_out=None, device=device,
                                       data_root=args.data_root, logit_scale=args.logit_scale,
                                       method=args.adapter)
        atomic_write(stem.with_suffix(".json"), json.dumps(metrics.to_dict(), indent=1))
        runs.append(metrics)
        wise = metrics.details.get("wise_ft")
        console.print(f"{args.adapter} seed {seed}: {metrics.trainable_parameters} parameters, lr {metrics.lr:g}, "
                      f"val {metrics.val_accuracy:.4f}  test {metrics.test_accuracy:.4f}"
                      + (f"; WiSE-FT α {wise['alpha']:g}: test {wise['test_accuracy']:.4f}" if wise else ""))
    _write_summary(out_dir, dataset, args.adapter, args.shots, runs, console)
    return 0


def _run_peer(args, train, val, test, seeds, head_for, dataset, out_dir, console, model) -> int:
    """A peer (linear probe, LP++, Tip-Adapter, Tip-Adapter-F, CLIP-Adapter, CoOp) on the cached embeddings, per seed."""
    import json

    from resi_dual.adapters.fewshot import run_peers
    from resi_dual.adapters.metrics import RunMetrics
    from resi_dual.adapters.peers import PeerTraining
    from resi_dual.files import atomic_write

    runs = []
    for seed in seeds:
        head, scale = head_for(seed)
        budget = PeerTraining(max_epochs=args.epochs, patience=args.patience, batch_size=args.batch, seed=seed)
        (row,) = run_peers(train, val, test, head.weights, scale, args.shots, seed, peers=[args.adapter], budget=budget,
                           model=model, class_names=head.class_names)
        row.update(classifier_kind=head.kind, logit_scale=scale, variant=args.adapter)
        atomic_write((out_dir / _stem(dataset, args.adapter, args.shots, seed)).with_suffix(".json"), json.dumps(row, indent=1))
        runs.append(RunMetrics.from_dict(row))
        console.print(f"{args.adapter} seed {seed}: {row['trainable_parameters']} parameters, "
                      f"val {row['accuracy']['val']:.4f}  test {row['accuracy']['test']:.4f}, settings {row['settings']}"
                      + (f"  [{row['note']}]" if row["note"] else ""))
    _write_summary(out_dir, dataset, args.adapter, args.shots, runs, console)
    return 0


def _float(text: str) -> float:
    from resi_dual.errors import ResiDualError

    try:
        return float(text)
    except ValueError:
        raise ResiDualError(f"--lr must be a number or 'auto', got {text!r}") from None


def _stem(dataset: str, variant: str, shots: int | None, seed: int) -> str:
    return f"{dataset}-{variant}" + (f"-{shots}shot" if shots else "") + f"-seed{seed}"


def _summary_path(out_dir, dataset: str, variant: str, shots: int | None):
    """The seeds' summary, written last: removed when a run starts, so it never describes an unfinished one."""
    return out_dir / (f"{dataset}-{variant}" + (f"-{shots}shot" if shots else "") + "-summary.json")


def _write_summary(out_dir, dataset, variant, shots, runs, console) -> None:
    import json

    from resi_dual.adapters.protocol import summarise_seeds
    from resi_dual.files import atomic_write

    if len(runs) < 2:
        return
    s = summarise_seeds(runs)
    path = _summary_path(out_dir, dataset, variant, shots)
    atomic_write(path, json.dumps({"variant": variant, "shots": shots, "seeds": [r.seed for r in runs], "accuracy": s}, indent=1))
    console.print(f"{variant} over {len(runs)} seeds: test {s['test']['mean']:.4f} ± {s['test']['std']:.4f} -> {path}")
