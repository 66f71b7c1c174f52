"""The adaptation experiment (paper §5) as grid cells: one cell per model × dataset × shots × method × seed.

A cell runs one method through the adapters' protocol: a variant on cached coefficients, a peer on
cached embeddings (CoOp also runs the text tower), or full fine-tuning / LoRA on the images.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from resi_dual.adapters.metrics import RunMetrics
from resi_dual.experiments.grid import Grid, cell_rows, load_cell_bases, open_cell_store
from resi_dual.experiments.outputs import Outputs
from resi_dual.experiments.summaries import adaptation_outputs

_HEADS: dict = {}  # frozen heads per (model, train store, rows)
#: Methods that run a tower on every step (the vision tower, or CoOp's text tower): their own epoch
#: budget, seeds and datasets (``finetune-max-epochs``, ``finetune-seeds``, ``tower-datasets``).
TOWER_METHODS = ("finetune", "lora", "coop")


def zero_shot_head(grid: Grid, m, train_store, train_rows=None):
    """The frozen classifier for a model × dataset: text prompts, or prototypes of the train rows a run
    may read (all of them outside the few-shot protocol)."""
    from resi_dual.zeroshot import classifier_for_source

    key = (m.name, train_store.key, None if train_rows is None else tuple(train_rows.tolist()))
    if key not in _HEADS:
        src = open_cell_store(train_store)
        _HEADS[key] = classifier_for_source(src, model=grid.model(m), train_source=src, train_rows=train_rows)
    return _HEADS[key]


def _result_row(base: dict, method: str, res: RunMetrics) -> dict:
    return {**base, "method": method, "trainable_parameters": int(res.trainable_parameters),
            "val_accuracy": float(res.val_accuracy), "test_accuracy": float(res.test_accuracy),
            "epochs": int(res.epochs), "best_epoch": int(res.best_epoch), "lr": res.lr, "note": res.note}


def adaptation_rows(grid: Grid, m, d, method: str, seed: int, stores: dict, bases_cell, shots: int | None = None,
                    reference_cell=None) -> list[dict]:
    """One run through the adapters' protocol: a variant on cached coefficients, a peer on cached
    embeddings, or full fine-tuning (which also gives the WiSE-FT row). With ``shots``, the few-shot
    protocol: only K train rows and min(K, 4) val rows per class are read."""
    from resi_dual.adapters import AdapterConfig, TrainConfig
    from resi_dual.adapters.peers import PEERS
    from resi_dual.adapters.protocol import labelled_rows
    from resi_dual.adapters.training import resolve_products

    s = grid.config.adaptation
    train, val, test = (open_cell_store(stores[k]) for k in ("train", "val", "test"))
    base = {"model": m.name, "dataset": d.name, "shots": shots or 0, "seed": seed}
    split = labelled_rows(train, val, shots, seed)
    lr = "sweep" if s.lr == "sweep" else None
    if method in ("finetune", "lora"):
        from resi_dual.adapters.adapter import DEFAULT_LR
        from resi_dual.adapters.finetune import finetune_from_stores

        res = finetune_from_stores(train, val, test, shots=shots, seed=seed, lr=lr or DEFAULT_LR[method],
                                   epochs=s.finetune_max_epochs, patience=s.patience, batch_size=s.batch_size,
                                   progress=grid.progress, device=grid.device, method=method)
        if s.finetune_max_epochs < s.max_epochs:
            res = replace(res, note="; ".join(filter(None, [res.note, f"budget cut: ≤ {s.finetune_max_epochs} epochs"])))
        if method == "lora":
            return [_result_row(base, "lora", res)]
        wise = res.details["wise_ft"]
        wise_row = {**base, "method": "wise-ft", "trainable_parameters": int(res.trainable_parameters),
                    "val_accuracy": float(wise["val_accuracy"]), "test_accuracy": float(wise["test_accuracy"]),
                    "epochs": int(res.epochs), "best_epoch": int(res.best_epoch), "lr": res.lr,
                    "note": f"α = {wise['alpha']:g}"}
        return [_result_row(base, "finetune", res), wise_row]
    head = zero_shot_head(grid, m, stores["train"], None if split is None else split.train_rows)
    if method in PEERS:
        from resi_dual.adapters.fewshot import run_peers
        from resi_dual.adapters.peers import TEXT_PEERS, PeerTraining
        from resi_dual.models.text import has_text_tower

        model = grid.model(m) if method in TEXT_PEERS else None
        if model is not None and not has_text_tower(model):
            return []  # CoOp learns a prompt: a vision-only model has no row
        epochs = s.finetune_max_epochs if method in TOWER_METHODS else s.max_epochs
        budget = PeerTraining(max_epochs=epochs, patience=s.patience, batch_size=s.batch_size, seed=seed)
        (res,) = run_peers(train, val, test, head.weights, head.logit_scale, shots, seed, peers=[method], budget=budget,
                           model=model, class_names=head.class_names)
        if epochs < s.max_epochs:
            res["note"] = "; ".join(filter(None, [res["note"], f"budget cut: ≤ {epochs} epochs"]))
        return [_result_row(base, method, RunMetrics.from_dict({"variant": method, **res}))]
    from resi_dual.adapters.protocol import train_and_evaluate

    bases = load_cell_bases(bases_cell) if bases_cell is not None else None
    reference = open_cell_store(reference_cell) if (reference_cell is not None and shots) else None
    torch.manual_seed(seed)
    _, res = train_and_evaluate(
        AdapterConfig(variant=method, init=s.init, seed=seed), train, val, test, head.weights, head.logit_scale,
        bases=bases, shots=shots, reference=reference,
        train_config=TrainConfig(lr=lr, batch_size=s.batch_size, max_epochs=s.max_epochs, patience=s.patience,
                                 products=resolve_products(s.products, torch.float32), seed=seed, progress=False))
    return [_result_row(base, method, res)]


def plan_adaptation(grid: Grid) -> tuple[list, Callable[[], Outputs]]:
    from resi_dual.adapters.adapter import needs_unit_bases
    from resi_dual.adapters.training import resolve_products

    cfg, s = grid.config, grid.config.adaptation
    # "auto" is keyed by what it resolves to here (measured once per machine, cached), and each cell
    # trains with that same resolved format
    products = resolve_products(s.products, torch.float32)
    methods = list(s.methods)
    trained = [mt for mt in methods if mt != "wise-ft"]  # WiSE-FT's rows come from the finetune cells
    if "wise-ft" in methods and "finetune" not in trained:
        trained.append("finetune")
    cells = []
    for m in cfg.models:
        ref_store = grid.store(m, cfg.reference, cfg.reference_split, cfg.limits.reference)
        ref_bases = grid.bases(ref_store)
        for d in cfg.datasets:
            stores = {sp: grid.store(m, d, sp, grid.limit_for(d, sp)) for sp in ("train", "val", "test")}
            bases = ref_bases if s.bases == "reference" else grid.bases(stores["train"])
            for shots in (s.shots or (None,)):
                for method in trained:
                    if method in TOWER_METHODS and s.tower_datasets is not None and d.name not in s.tower_datasets:
                        continue
                    needs_bases = needs_unit_bases(method)
                    seeds = cfg.seeds[:1] if method in ("zeroshot", "tip-adapter") and shots is None else cfg.seeds
                    if method in TOWER_METHODS and s.finetune_seeds is not None:
                        seeds = s.finetune_seeds
                    for seed in seeds:
                        settings = {"method": method, "seed": seed, "init": s.init, "max_epochs": s.max_epochs,
                                    "patience": s.patience, "batch_size": s.batch_size, "lr": s.lr}
                        if shots is not None:
                            settings["shots"] = shots
                        if method in TOWER_METHODS:
                            settings["finetune_max_epochs"] = s.finetune_max_epochs
                        if method in ("residual", "residual-keep", "residual-full", "coarse", "spectral"):
                            settings["products"] = products  # the λ-step methods
                        deps = list(stores.values()) + ([bases] if needs_bases else []) + ([ref_store] if shots else [])
                        name = f"{m.name}.{d.name}.{method}" + (f".k{shots}" if shots else "") + f".s{seed}"
                        cells.append(grid.analysis(
                            "adaptation", name, settings, deps,
                            lambda m=m, d=d, method=method, seed=seed, st=stores, b=(bases if needs_bases else None),
                            k=shots, r=ref_store:  # noqa: E731
                            adaptation_rows(grid, m, d, method, seed, st, b, k, r)))

    def summarize() -> Outputs:
        rows = [r for c in cells for r in cell_rows(c) if r["method"] in methods]
        return adaptation_outputs(cfg, rows, methods)

    return cells, summarize
