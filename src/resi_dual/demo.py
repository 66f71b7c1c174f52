"""`resi-dual demo`: the whole ResiDual pipeline on the bundled demo model, as one report.

The demo model (``demo``: a 6-layer × 6-head CLIP vision tower trained by ``resi-dual
pretrain-demo`` on the attribute world against frozen MiniLM text embeddings) is run on held-out
world images of its pretraining classes, on the world's held-out animal classes, and on plain
Fashion-MNIST. The four experiments of the paper run over that small grid through the experiment
runner, so the demo is cached and resumable like any grid; the report then gathers their tables and
figures, adds the spectra of the top heads and accuracy against trainable parameters, and ends with
the ground-truth check of the heads' descriptions against a random-weight control.
"""

from __future__ import annotations

import time
from pathlib import Path

from resi_dual.errors import ResiDualError
from resi_dual.experiments.config import GridConfig, parse_config
from resi_dual.report.tables import read_table

#: the demo grid; ``quick`` shrinks limits and epochs for tests
DEMO_GRID = {
    "grid": {"seeds": [0], "convention": "paper", "batch-size": 256},
    "models": [{"name": "demo", "spec": "demo"}],
    "datasets": [
        {"name": "world-unseen", "spec": "world:objects=unseen"},  # animal classes held out of pretraining
        {"name": "world", "spec": "world"},  # pretraining classes, held-out glyphs
        {"name": "fashion-mnist", "spec": "fashion-mnist"},  # plain garments, outside the world
    ],
    "reference": {"name": "world", "spec": "world", "split": "train"},
    "limits": {"reference": 3000, "train": 2000, "val": 500, "test": 2000, "noise": 500},
    "intrinsic-dim": {"variance": 0.99, "twonn-max-samples": 3000},
    "similarity": {"variance": 0.9, "split": "train", "noise": True},
    "specialization": {"rankings": ["S", "U|T", "U", "random"], "fractions": [0.05, 0.1, 0.25, 0.5, 0.75, 1.0],
                       "random-seeds": 10, "ablation": "mean", "describe-top": 3, "describe-terms": 5},
    # every method picks its lr on val from a grid of the same size; the methods that rerun a tower on
    # every step (finetune, wise-ft, lora, coop) are left to the offline grid (docs/results/adaptation):
    # with their lr sweep they alone would take longer than the demo's whole budget on 2 cores
    "adaptation": {"methods": ["zeroshot", "residual", "residual-keep", "residual-full", "coarse", "linear", "spectral",
                               "linear-probe", "lp++", "tip-adapter", "tip-adapter-f", "clip-adapter"],
                   "lr": "sweep", "bases": "task", "max-epochs": 30, "patience": 5, "batch-size": 64, "init": "ones"},
}

QUICK_LIMITS = {"reference": 300, "train": 200, "val": 100, "test": 200, "noise": 60}


def demo_config(quick: bool = False) -> GridConfig:
    """The demo grid as a validated :class:`GridConfig` (``quick``: tiny limits for smoke tests)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEMO_GRID.items()}
    if quick:
        data["limits"] = dict(QUICK_LIMITS)
        data["intrinsic-dim"] = {**data["intrinsic-dim"], "twonn-max-samples": 300}
        data["specialization"] = {**data["specialization"], "random-seeds": 2}
        data["adaptation"] = {**data["adaptation"], "max-epochs": 3,
                              "methods": ["zeroshot", "residual", "residual-keep", "linear-probe", "tip-adapter"]}
    return parse_config(data, source="demo" + (" (quick)" if quick else ""))


def _spectra_figure(bases, labels: list[str], path: Path) -> Path:
    """Cumulative explained variance of a few units' PCA (log-x), one line each."""
    import numpy as np

    from resi_dual.report.plots import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for lab in labels:
        ratio = bases.explained_variance_ratio(lab).double().numpy()
        ax.plot(np.arange(1, ratio.size + 1), np.cumsum(ratio), label=lab)
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.axhline(0.99, color="grey", lw=0.8, ls=":")
    return _save_log_x(fig, ax, path, "principal components", "cumulative explained variance",
                       "Spectra of the top heads (dashed: 90 %, dotted: 99 %)")


def _params_figure(summary: list[dict], path: Path) -> Path:
    """Test accuracy against trainable parameters (log-x), one marker per method, per dataset."""
    from resi_dual.report.plots import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    markers = {"world-unseen": "o", "world": "s", "fashion-mnist": "^"}
    methods = list(dict.fromkeys(r["method"] for r in summary))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    for r in summary:
        if not r.get("test_accuracy_mean"):
            continue
        p = max(float(r["trainable_parameters"]), 1.0)  # zero-shot has 0: drawn at 1
        acc = 100 * float(r["test_accuracy_mean"])
        ax.scatter(p, acc, marker=markers.get(r["dataset"], "^"), s=36, color=colours[r["method"]])
        ax.annotate(r["method"], (p, acc), textcoords="offset points", xytext=(4, 3), fontsize=7)
    for name, m in markers.items():
        ax.scatter([], [], marker=m, color="k", label=name)
    return _save_log_x(fig, ax, path, "trainable parameters (zero-shot drawn at 1)", "test top-1 accuracy (%)",
                       "Accuracy against trainable parameters")


def _save_log_x(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Finish a figure of the demo report (log-x axes, labels, a legend) and save it at its own dpi (110)."""
    from resi_dual.report.plots import save_figure

    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=None)


def _pretraining_log() -> list[dict]:
    from resi_dual.models.demo import DEMO_DIR

    log = DEMO_DIR / "train_log.tsv"
    return read_table(log) if log.is_file() else []


def _prepare_out(out: Path) -> Path:
    """``out`` as a demo folder: empty, new, or an earlier demo (resumed); anything else is refused."""
    if out.exists() and any(out.iterdir()) and not (out / "grid").is_dir():
        raise ResiDualError(f"{out} holds something that is not a demo report; choose an empty or new folder")
    return out / "grid"


def _run_experiments(cfg: GridConfig, grid_dir: Path, progress: bool) -> float:
    """The four experiments into ``grid_dir`` (cached cells reused); returns the seconds taken."""
    from resi_dual.experiments.runners import EXPERIMENTS
    from resi_dual.report.experiments import run_experiment

    t0 = time.perf_counter()
    for name in EXPERIMENTS:
        run_experiment(name, cfg, grid_dir, progress=progress)
    return time.perf_counter() - t0


def _introduction(rep, cfg: GridConfig, seconds: float) -> None:
    rep.text(
        "The bundled `demo` model is a 6-layer, 6-head CLIP vision tower (32 px, patch 4) trained by "
        "`resi-dual pretrain-demo` on the attribute world (coloured garments, digits and animals at named "
        "places and sizes on textured backgrounds, captions naming random subsets of the attributes) against "
        "frozen MiniLM text embeddings. `world-unseen` holds the five animal classes kept out of pretraining; "
        "`world` the pretraining classes drawn from held-out source images; Fashion-MNIST is outside the world. "
        f"Grid: {cfg.source}; reference for the PCA bases of the similarity experiment: {cfg.reference.name} "
        f"train ({cfg.limits.reference} images); task limits train {cfg.limits.train}, val {cfg.limits.val}, "
        f"test {cfg.limits.test}. All four experiments took {seconds:.0f} s (cached cells are reused on a rerun)."
    )
    log = _pretraining_log()
    if log:
        rep.section("Pretraining of the demo model", "Per-epoch log committed next to the checkpoint.")
        rep.table(log[-6:], caption="last rows of the pretraining log (train_log.tsv)")


def _adaptation_section(rep, grid_dir: Path, out: Path) -> None:
    """The headline: test top-1 of every method against its trainable parameters."""
    ad = grid_dir / "adaptation"
    summary = read_table(ad / "summary.tsv")
    rep.section(
        "Adaptation (paper §5)",
        "Test top-1 of each method with its trainable parameters. `residual`: one scalar per principal "
        "component of each head (components up to 90 % variance, other units dropped); `residual-keep`: the same "
        "with the rest of the residual kept (MLPs, embedding, the heads' means and variance past the cut: λ = 1 "
        "is zero-shot); `residual-full`: heads and MLPs, all components; `coarse`: one scalar "
        "per head; `linear`: d×d+bias on the output; `spectral`: diagonal in the output's PCA basis; the peers "
        "`linear-probe` (logistic regression, C on val), `lp++` (a linear probe blended with the text rows, "
        "step sizes from Lipschitz bounds), `tip-adapter` (training-free cache), `tip-adapter-f`, "
        "`clip-adapter`. Full fine-tuning, WiSE-FT, LoRA and CoOp rerun a tower on every step and are left to the "
        "offline grid (`configs/offline.toml`, tables in docs/results/adaptation of the repository). Every method "
        "picks its learning rate on val from a grid of the same size (see the lr and note "
        "columns). The text classifier is frozen for all of them; the fits are supervised on the train split, "
        "selected on val. Bases from each task's own train split.",
    )
    cols = ("dataset", "method", "trainable_parameters", "test_accuracy", "seeds", "lr", "note")
    rep.table([{c: r.get(c, "") for c in cols} for r in summary], caption="adaptation/summary.tsv (accuracy in %)")
    rep.figure(_params_figure(summary, out / "figures" / "accuracy_vs_parameters.png"),
               "accuracy against trainable parameters")
    for png in sorted((ad / "figures").glob("*.png")):
        rep.figure(png, f"adaptation: {png.stem}")


def _intrinsic_dim_section(rep, grid_dir: Path, cfg: GridConfig) -> None:
    idd = grid_dir / "intrinsic-dim"
    rep.section(
        "Intrinsic dimension per unit (paper §3.1)",
        f"Linear ID (components for 99 % variance), TwoNN ID, their ratio and PC1's share, per unit of the "
        f"model on {cfg.reference.name} train.",
    )
    for png in sorted((idd / "figures").glob("*.png")):
        rep.figure(png, f"intrinsic dimension heatmaps: {png.stem}")
    rep.table(read_table(idd / "summary_by_layer.tsv"), caption="intrinsic-dim/summary_by_layer.tsv")


def _reference_store(cfg: GridConfig, grid_dir: Path):
    """The demo grid (no progress) and the cell of its reference store."""
    from resi_dual.experiments.grid import Grid

    grid = Grid(cfg, grid_dir, progress=False)
    return grid, grid.store(cfg.models[0], cfg.reference, cfg.reference_split, cfg.limits.reference)


def _spectra_section(rep, grid_dir: Path, cfg: GridConfig, out: Path) -> None:
    """Cumulative explained variance of the top heads by S on the held-out dataset, and the last MLP."""
    from resi_dual.experiments.grid import load_cell_bases

    grid, ref_store = _reference_store(cfg, grid_dir)
    bases = load_cell_bases(grid.bases(ref_store))
    top = read_table(grid_dir / "specialization" / "top_heads.tsv")
    top_labels = [r["unit"] for r in top if r.get("ranking") == "S" and r.get("dataset") == cfg.datasets[0].name][:4]
    heads = [u.label for u in bases.composition.head_units if u.label in bases.labels]
    top_labels = [lab for lab in top_labels if lab in bases.labels] or heads[:4]
    last_mlp = [u.label for u in bases.composition.units if u.kind == "mlp" and u.label in bases.labels][-1:]
    rep.figure(_spectra_figure(bases, top_labels + last_mlp, out / "figures" / "spectra.png"),
               f"cumulative explained variance of the top heads' PCA on {cfg.reference.name} train")


def _similarity_section(rep, grid_dir: Path) -> None:
    sim = grid_dir / "similarity"
    rep.section(
        "Similarity of head spectra across datasets (paper §3.2)",
        "Normalised spectral cosine between each head's principal subspace on a task dataset and on the "
        "reference (1 = same spectrum); random-noise images are the control.",
    )
    for png in sorted((sim / "figures").glob("*.png")):
        rep.figure(png, f"similarity: {png.stem}")
    for tsv in sorted(sim.glob("summary*.tsv")):
        rep.table(read_table(tsv), caption=f"similarity/{tsv.name}")


def _specialization_section(rep, grid_dir: Path) -> None:
    spec_dir = grid_dir / "specialization"
    rep.section(
        "Head specialization (paper §4)",
        "Zero-shot accuracy when only the top-ranked heads are kept and the others are replaced by their "
        "train-split mean. Rankings: S (each head alone), U|T (correlation within the text-centroid "
        "subspace), U (with the full output), random (mean ± std over seeds).",
    )
    for png in sorted((spec_dir / "figures").glob("*.png")):
        rep.figure(png, f"specialization: {png.stem}")
    top = read_table(spec_dir / "top_heads.tsv")
    rep.table([r for r in top if r.get("ranking") == "S"], caption="top heads by S and their TextSpan descriptions")


def _explorer_section(rep, grid_dir: Path, cfg: GridConfig, out: Path) -> None:
    """Build the explorer site of the reference store into ``out/explorer`` and link it from the report."""
    from resi_dual.experiments.grid import STORE_DIR
    from resi_dual.report.explorer import ExploreOptions, build_site

    grid, ref_store = _reference_store(cfg, grid_dir)
    id_table = grid_dir / "intrinsic-dim" / "units.tsv"
    stats = build_site(ref_store.path / STORE_DIR, out / "explorer", analysis=grid.bases(ref_store).path,
                       id_table=id_table, options=ExploreOptions(pcs=5, images=6))
    rep.section(
        "Explorer: what each head encodes, with images",
        f"[Open the explorer](explorer/index.html) (a static site, no server): layers × heads coloured by a "
        f"measure; per head its spectrum and, for each of its first 5 principal components, the 6 reference images "
        f"with the highest and the lowest coefficient, with the component's exact spatial map drawn over each "
        f"(red: positive, blue: negative). {stats.traced_images} distinct images re-traced in "
        f"{stats.trace_seconds:.0f} s; the rest of the site {stats.other_seconds:.0f} s; {stats.bytes / 2**20:.1f} MB.",
    )


def run_demo(out: str | Path, quick: bool = False, progress: bool = True) -> Path:
    """Run the demo grid into ``out/grid`` and write ``out/index.html`` and ``out/results.md``.

    Returns the path of ``index.html``.
    """
    from resi_dual.report.html import Report

    out = Path(out)
    grid_dir = _prepare_out(out)
    cfg = demo_config(quick)
    seconds = _run_experiments(cfg, grid_dir, progress)
    rep = Report("resi-dual demo: ResiDual on a small vision-language model, offline")
    _introduction(rep, cfg, seconds)
    _adaptation_section(rep, grid_dir, out)
    _intrinsic_dim_section(rep, grid_dir, cfg)
    _spectra_section(rep, grid_dir, cfg, out)
    _similarity_section(rep, grid_dir)
    _specialization_section(rep, grid_dir)
    _explorer_section(rep, grid_dir, cfg, out)
    _ground_truth_section(rep, out, quick)
    return rep.write(out)


def _ground_truth_section(rep, out: Path, quick: bool) -> None:
    """The ground-truth check of the demo's heads and of a random-weight twin, as report tables."""
    from resi_dual.experiments.groundtruth import ground_truth
    from resi_dual.report.groundtruth import BRIEF_COLUMNS, summary_rows, write_ground_truth

    n = 200 if quick else 1000
    results = ground_truth("demo", n=n, seed=0, control=True)
    write_ground_truth(results, out / "groundtruth")
    rep.section(
        "Ground truth: do the heads' descriptions name what they carry? (docs/DESIGN.md §13)",
        f"On {n} held-out world images every attribute is known. Per head, a logistic probe on its first 8 PCA "
        "coefficients (fitted on half the images, scored on the other half) gives the adjusted balanced accuracy "
        "of each attribute (0 = chance, 1 = perfect); the strongest attribute is the one where the head reaches "
        "the largest share of the best head's score. A description agrees when it names that attribute "
        "(dictionary: one caption per attribute value). The control is a random-weight tower of the same shape. "
        "All tables: `groundtruth/`.",
    )
    rep.table(summary_rows(results), caption="agreement rates and the best head's probe score per attribute")
    heads = results["trained"][0]
    rep.table([{c: r[c] for c in BRIEF_COLUMNS} for r in heads], caption="trained tower: head → strongest attribute "
              "(measured) → TextSpan descriptions → agree? (SOMP's top description's attribute beside)")
