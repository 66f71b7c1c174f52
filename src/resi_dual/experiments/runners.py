"""The paper's four experiments as grids of cached cells: plan the cells, compute them, return rows.

``compute_experiment(name, config, out)`` plans the cells (:mod:`resi_dual.experiments.grid`),
computes the missing ones under ``OUT/cells`` and returns an :class:`ExperimentRun` whose outputs
(tables and figure specs, :mod:`resi_dual.experiments.summaries`) ``resi_dual.report.experiments``
writes to ``OUT/<name>/``. The stages do the work; this module only wires them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from resi_dual.errors import ResiDualError
from resi_dual.experiments.adaptation import plan_adaptation, zero_shot_head
from resi_dual.experiments.config import GridConfig, convert
from resi_dual.experiments.grid import Grid, cell_rows, load_cell_bases, open_cell_store
from resi_dual.experiments.outputs import Outputs
from resi_dual.experiments.summaries import intrinsic_dim_outputs, similarity_outputs, specialization_outputs
from resi_dual.store.disk import StoreDtype

EXPERIMENTS = ("intrinsic-dim", "similarity", "specialization", "adaptation")


# -- intrinsic dimension (paper §3.1) ----------------------------------------------------------------
def intrinsic_dim_rows(grid: Grid, store_cell, bases_cell, model_name: str, settings) -> list[dict]:
    """One row per unit (the spectral engine's ID table): linear ID, TwoNN ID, their ratio, PC1 ratio, PR."""
    from resi_dual.spectral.intrinsic_dim import unit_intrinsic_dimensions

    source = open_cell_store(store_cell)
    bases = load_cell_bases(bases_cell)
    wanted = {source.composition.units[i].label for i in source.composition.select(settings.units)}
    table = unit_intrinsic_dimensions(source, bases, threshold=settings.variance, twonn_samples=settings.twonn_max_samples,
                                      twonn_discard=settings.twonn_discard, seed=0, progress=grid.progress)
    return [{"model": model_name, "unit": r.unit, "kind": r.kind, "layer": r.layer, "head": r.head,
             "linear_id": int(r.linear_id), "twonn_id": float(r.twonn_id), "id_ratio": float(r.ratio),
             "pc1_ratio": float(r.pc1_ratio), "participation_ratio": float(r.participation_ratio), "n": len(source)}
            for r in table if r.unit in wanted]


def plan_intrinsic_dim(grid: Grid) -> tuple[list, Callable[[], Outputs]]:
    cfg = grid.config
    cells = {}
    for m in cfg.models:
        store = grid.store(m, cfg.reference, cfg.reference_split, cfg.limits.reference)
        bases = grid.bases(store)
        s = cfg.intrinsic_dim
        cells[m.name] = grid.analysis("intrinsic-dim", f"{m.name}.{cfg.reference.name}", {"model": m.name, "settings": s},
                                      [store, bases], lambda st=store, b=bases, n=m.name: intrinsic_dim_rows(grid, st, b, n, s))

    def summarize() -> Outputs:
        return intrinsic_dim_outputs(cfg, [r for c in cells.values() for r in cell_rows(c)])

    return list(cells.values()), summarize


# -- similarity (paper §3.2) ---------------------------------------------------------------------------
def similarity_rows(ref_bases_cell, bases_cell, model_name: str, dataset_name: str, variance: float) -> list[dict]:
    """One row per head: the spectral engine's normalised spectral cosine against the reference."""
    from resi_dual.spectral.similarity import similarity_table

    ref, other = load_cell_bases(ref_bases_cell), load_cell_bases(bases_cell)
    heads = [u.label for u in ref.composition.head_units]
    return [{"model": model_name, "dataset": dataset_name, "unit": r.unit, "layer": r.layer, "head": r.head,
             "similarity": float(r.similarity), "k_reference": int(r.k_a), "k_dataset": int(r.k_b)}
            for r in similarity_table(ref, other, units=heads, variance=variance)]


def plan_similarity(grid: Grid) -> tuple[list, Callable[[], Outputs]]:
    cfg, s = grid.config, grid.config.similarity
    cells = []
    datasets = [d for d in cfg.datasets]
    for m in cfg.models:
        ref_bases = grid.bases(grid.store(m, cfg.reference, cfg.reference_split, cfg.limits.reference))
        targets = [(d, grid.store(m, d, s.split, grid.limit_for(d, s.split))) for d in datasets]
        if s.noise:
            from resi_dual.experiments.config import DatasetEntry

            noise = DatasetEntry("noise", "noise")
            targets.append((noise, grid.store(m, noise, "train", None, noise=(cfg.limits.noise, s.noise_seed))))
        for d, store in targets:
            b = grid.bases(store)
            cells.append(grid.analysis("similarity", f"{m.name}.{d.name}", {"variance": s.variance}, [ref_bases, b],
                                       lambda r=ref_bases, b=b, mn=m.name, dn=d.name: similarity_rows(r, b, mn, dn, s.variance)))

    def summarize() -> Outputs:
        return similarity_outputs(cfg, [r for c in cells for r in cell_rows(c)])

    return cells, summarize


# -- specialization (paper §4) ----------------------------------------------------------------------
def specialization_rows(grid: Grid, m, d, stores: dict) -> list[dict]:
    """Rank heads on val, ablate on test (head means from train, or the paper protocol's); describe the top
    heads with TextSpan.

    Rows carry ``table``: ``curve`` (accuracy vs heads kept per ranking and ablation mode) or
    ``descriptions`` (the best heads of each non-random ranking and their top dictionary texts).
    """
    from resi_dual.zeroshot.specialize import ablation_curves, head_means, keep_sizes, rank_heads, summarize_random

    s = grid.config.specialization
    train, val, test = (open_cell_store(stores[k]) for k in ("train", "val", "test"))
    head = zero_shot_head(grid, m, stores["train"])
    rankings = rank_heads(val, head, methods=s.rankings, seeds=range(s.random_seeds), protocol=s.protocol)
    n_heads = len(val.composition.head_units)
    sizes = keep_sizes(n_heads, [f for f in s.fractions if f < 1.0], protocol=s.protocol)
    means = head_means(train) if s.ablation == "mean" and s.protocol == "project" else None
    res = ablation_curves(test, head, rankings, sizes, modes=(s.ablation,), means=means, protocol=s.protocol)
    rows = []
    for method, by_mode in summarize_random(res).items():
        mean, std = by_mode[s.ablation]
        for size, a, sd in zip(res.sizes, mean, std):
            rows.append({"table": "curve", "model": m.name, "dataset": d.name, "ranking": method, "ablation": s.ablation,
                         "heads_kept": int(size), "fraction": size / n_heads, "accuracy": float(a),
                         "accuracy_std": float(sd), "base_accuracy": float(res.base_accuracy)})
    texts = _describe_heads(grid, m, val, rankings, s) if s.describe_top > 0 else {}
    heads = val.composition.head_units
    for r in rankings:
        if r.seed is not None:
            continue
        for rank, pos in enumerate(r.order[: s.describe_top]):
            lab = heads[pos].label
            rows.append({"table": "descriptions", "model": m.name, "dataset": d.name, "ranking": r.method,
                         "rank": rank + 1, "unit": lab, "score": float(r.scores[pos]),
                         "descriptions": " | ".join(texts.get(lab, [])) or "(no text tower)"})
    return rows


def _describe_heads(grid: Grid, m, source, rankings, s) -> dict[str, list[str]]:
    """TextSpan descriptions of the heads that some ranking puts in its top ``describe_top``."""
    from resi_dual.models.text import get_text_tower, has_text_tower

    model = grid.model(m)
    if not has_text_tower(model):
        return {}
    from resi_dual.interpret.units import decompose_units, embed_dictionary, load_dictionary

    heads = source.composition.head_units
    wanted = sorted({heads[p].label for r in rankings if r.seed is None for p in r.order[: s.describe_top]},
                    key=lambda lab: source.composition.index(lab))
    if not wanted:
        return {}
    key = ("dictionary", m.name)
    if key not in _HEADS:
        texts = load_dictionary()
        _HEADS[key] = (texts, embed_dictionary(get_text_tower(model), texts))
    texts, dictionary = _HEADS[key]
    dec = decompose_units(source, dictionary, texts, method="textspan", k=s.describe_terms, units=",".join(wanted),
                          progress=False)
    return {lab: list(d.texts) for lab, d in dec.items()}


def plan_specialization(grid: Grid) -> tuple[list, Callable[[], Outputs]]:
    cfg, s = grid.config, grid.config.specialization
    cells = []
    for m in cfg.models:
        for d in cfg.datasets:
            stores = {sp: grid.store(m, d, sp, grid.limit_for(d, sp)) for sp in ("train", "val", "test")}
            cells.append(grid.analysis("specialization", f"{m.name}.{d.name}", {"settings": s}, list(stores.values()),
                                       lambda m=m, d=d, st=stores: specialization_rows(grid, m, d, st)))

    def summarize() -> Outputs:
        return specialization_outputs(cfg, [r for c in cells for r in cell_rows(c)])

    return cells, summarize


_HEADS: dict = {}  # TextSpan dictionaries per model (the adaptation heads are cached in adaptation.py)


PLANNERS = {
    "intrinsic-dim": plan_intrinsic_dim,
    "similarity": plan_similarity,
    "specialization": plan_specialization,
    "adaptation": plan_adaptation,
}


def encode_commands(cells, nproc: int, device: str = "cpu") -> list[str]:
    """``torchrun … -m resi_dual encode`` commands that write the missing stores of ``cells`` in place.

    A store written this way has the plan the experiment expects (same model, dataset, split, limit,
    batch size, dtype, convention), so the experiment's store cell then finds it complete. The
    noise-control stores are synthetic and left to the experiment itself.
    """
    import shlex

    from resi_dual.experiments.cells import topological
    from resi_dual.experiments.grid import STORE_DIR

    out = []
    for c in topological(cells):
        st = c.settings
        if c.kind != "store" or c.done() or st.get("noise"):
            continue
        args = ["torchrun", f"--nproc_per_node={nproc}", "-m", "resi_dual", "encode", "--model", st["model"],
                "--dataset", st["dataset"], "--split", st["split"], "--out", str(c.path / STORE_DIR),
                "--batch-size", str(st["batch_size"]), "--dtype", st["dtype"], "--convention", st["convention"]]
        if st["limit"]:
            args += ["--limit", str(st["limit"])]
        if st["root"]:
            args += ["--data-root", st["root"]]
        if device != "cpu":  # under torchrun, `cuda` is each process's cuda:LOCAL_RANK
            args += ["--device", device]
        out.append(" ".join(shlex.quote(a) for a in args))
    return out


@dataclass
class ExperimentRun:
    """What :func:`compute_experiment` hands to ``resi_dual.report.experiments`` to show or write.

    ``summary`` is ``run.json``'s content; ``outputs`` the tables and figure specs (None when only the
    status or the encode commands were asked for); ``cells`` every cell of the plan, dependencies first.
    """

    name: str
    summary: dict
    outputs: Outputs | None = None
    cells: list = field(default_factory=list)
    encode_commands: list[str] = field(default_factory=list)


def compute_experiment(name: str, config: GridConfig, out: str | Path, progress: bool = True, status_only: bool = False,
                       store_dtype: str | None = None, models: list[str] | None = None, workers: int = 0,
                       print_encode: int = 0, device: str | None = None) -> ExperimentRun:
    """Plan one experiment and compute its missing cells under ``out/cells`` (resuming); write no tables.

    Args:
        store_dtype: storage of the raw encodings (part of the stores' keys); default the grid's ``store_dtype``.
        models: run only these models of the grid (to split a grid across machines or GPUs; tables then
            cover these models only — a final run without the filter gathers everything from the cache).
        workers: DataLoader processes decoding images for the stores.
        status_only: only plan (``cells`` say what is done and left).
        print_encode: only plan the ``torchrun --nproc_per_node=<print_encode>`` commands of the missing stores.
        device: where models run (``cpu``, ``cuda``, ``cuda:N``, ``mps``); default the grid's ``device``.
            Checked to exist before any cell is computed (not for ``status_only`` / ``print_encode``).
    """
    import dataclasses

    from resi_dual.experiments.cells import topological

    if name not in PLANNERS:
        raise ResiDualError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    if models:
        unknown = [m for m in models if m not in {e.name for e in config.models}]
        if unknown:
            raise ResiDualError(f"--models: {unknown[0]!r} is not a model of {config.source or 'the grid'}")
        config = dataclasses.replace(config, models=tuple(e for e in config.models if e.name in models))
    from resi_dual.models.loading import check_device_string, resolve_device

    device = check_device_string(config.device if device is None else device, "--device")
    if not (status_only or print_encode):
        resolve_device(device, "--device" if device != config.device else f"{config.source or 'grid'}: grid.device")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if store_dtype is not None:
        config = dataclasses.replace(config, store_dtype=convert("--store-dtype", store_dtype, StoreDtype))
    grid = Grid(config, out, progress=progress, workers=workers, device=device)
    cells, summarize = PLANNERS[name](grid)
    if print_encode:
        cmds = encode_commands(cells, print_encode, device)
        return ExperimentRun(name, {"encode_commands": len(cmds)}, cells=cells, encode_commands=cmds)
    if status_only:
        all_cells = topological(cells)
        return ExperimentRun(name, {"cells": len(all_cells), "done": sum(c.done() for c in all_cells)}, cells=all_cells)
    t0 = time.perf_counter()
    counts = grid.run(cells, f"{name}: {config.source or 'grid'}")
    outputs = summarize()
    summary = {"experiment": name, "config": config.source, "models": [m.name for m in config.models], "device": device,
               **counts, "seconds": round(time.perf_counter() - t0, 1), **outputs.extra}
    return ExperimentRun(name, summary, outputs, cells=topological(cells))
