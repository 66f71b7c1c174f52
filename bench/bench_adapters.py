"""Adapters: training on cached coefficients vs. the paper's design (frozen backbone on every batch).

Measured in one run on a ViT-B/32-sized random-weight CLIP vision tower (12 layers × 12 heads,
width 768, 224 px, patch 32, projection 512):
* the paper's design: per batch of 64 images the frozen backbone forward with the unit decomposition
  (`TracedModel.trace`) — a few batches are timed and scaled to a 50k-sample epoch (782 batches);
  the adapter step itself is left out of the baseline, which only flatters the baseline;
* ours: one epoch of `fit` on cached coefficients of 50k samples × 144 heads (synthetic coefficients
  at ViT-B scale, k components per head), then a full 30-epoch fit (no early stop) with a 10k
  validation split evaluated every epoch, once at the default products (``"auto"``: whichever of
  float32 and bfloat16 timed faster on this machine at these shapes) and once at float32;
* where the time goes: one epoch with the hand-written step vs the plain autograd loop (same math),
  and the floor — the two (64 × K)·(K × d) and (64 × d)·(d × K) products of every step, bare;
* trainable parameters of every adapter at ViT-B/32 geometry.

The epoch comparisons run single-threaded, interleaved, median of ``REPEATS``; the 30-epoch fit runs
with the process's threads (2 on the reference machine; `fit` picks 1 or 2 per window by timing).
"""

from __future__ import annotations

import tempfile
import time
import warnings

import torch

from bench.run import reps

from resi_dual.runtime import torch_threads

TITLE = "Adapters: cached-coefficient training vs. backbone-per-batch (ViT-B/32 geometry)"

N_TRAIN, N_VAL, BATCH, N_CLASSES = 50_000, 10_000, 64, 10
L, H, D_MODEL, D_OUT = 12, 12, 768, 512
REPEATS = 3  # interleaved repetitions of the single-threaded epoch timings
K_PER_HEAD = 16  # assumed 90 %-variance cut per head (random-weight heads say nothing about trained ones)

NOTES = [
    "`--products auto` times float32 and bfloat16 products on the fit's shapes once per machine and shape "
    "(cached in ~/.cache/resi-dual/products.json) and takes bfloat16 only when it is ≥ 1.15× faster. Measured "
    "so far, 64×2304·2304×512 and back, 1 thread: on a 2-core AMD EPYC with AVX512-BF16 (no AMX), 2026-12-01, "
    "bfloat16 0.32 s vs float32 0.77 s per 782 steps; on another of the same kind (2026-12-02, issue 19) "
    "bfloat16 3.62 s vs float32 2.20 s per epoch — which is why flags alone cannot decide.",
    "Thread count of the two products (`ThreadPicker`): one epoch's products took 2.6 s at 1 thread and 1.5 s "
    "at 2 on a nearly idle 2-core machine, 5.0 s and 17.6 s under a load average of ~4; the small ops of a "
    "step cost ~10 ms per step at 2 threads vs ~0.7 ms at 1 on busy cores (OpenMP fork/join).",
]


def _vit_b32(tmp: str):
    import transformers as tf

    from resi_dual import load_model

    torch.manual_seed(0)
    cfg = tf.CLIPVisionConfig(hidden_size=D_MODEL, intermediate_size=4 * D_MODEL, num_hidden_layers=L,
                              num_attention_heads=H, image_size=224, patch_size=32, projection_dim=D_OUT)
    tf.CLIPVisionModelWithProjection(cfg).save_pretrained(tmp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(f"hf:{tmp}")


def _backbone_batch_seconds(model, g: torch.Generator) -> float:
    px = torch.randn(BATCH, 3, 224, 224, generator=g)
    t = time.perf_counter()
    model.trace(px, check=False)
    return time.perf_counter() - t


def _bare_products_seconds(comps: torch.Tensor, n_steps: int, dtype: torch.dtype = torch.float32) -> float:
    """The floor of one epoch: per step y = a V and g Vᵀ at the fit's shapes in ``dtype``, nothing else."""
    K, d = comps.shape
    v = comps.to(dtype)
    a, g = torch.randn(BATCH, K, dtype=dtype), torch.randn(BATCH, d, dtype=dtype)
    y, ga = torch.empty(BATCH, d, dtype=dtype), torch.empty(BATCH, K, dtype=dtype)
    t = time.perf_counter()
    for _ in range(n_steps):
        torch.mm(a, v, out=y)
        torch.mm(g, v.T, out=ga)
    return time.perf_counter() - t


def _floor(comps: torch.Tensor, n_steps: int, dtype: torch.dtype) -> tuple[float, float]:
    """(one epoch of bare products at 1 thread, at the process's count), best of 2 each."""
    n = min(_bare_products_seconds(comps, n_steps, dtype) for _ in range(2))
    with torch_threads(1):
        one = min(_bare_products_seconds(comps, n_steps, dtype) for _ in range(2))
    return one, n


def _synthetic_splits(k: int, seed: int = 0):
    """Cached splits at ViT-B scale: 144 heads × k orthonormal components in 512-d, labels carried by a few heads."""
    from resi_dual.adapters.cache import CachedSplit

    g = torch.Generator().manual_seed(seed)
    comps = torch.cat([torch.linalg.qr(torch.randn(D_OUT, k, generator=g))[0].T for _ in range(L * H)])  # (K, d)
    K = comps.shape[0]
    scale = (0.7 ** torch.arange(k, dtype=torch.float32)).repeat(L * H)  # decaying spectrum per head
    informative = torch.randperm(K, generator=g)[: 4 * k]
    proto = torch.randn(N_CLASSES, informative.numel(), generator=g)

    def split(n):
        y = torch.randint(0, N_CLASSES, (n,), generator=g)
        coef = torch.randn(n, K, generator=g) * scale
        coef[:, informative] += 0.1 * proto[y]
        return CachedSplit(coef, torch.zeros(n, D_OUT), y)

    tr, va = split(N_TRAIN), split(N_VAL)
    emb = (tr.coef[:4096] @ comps)
    clf = torch.nn.functional.normalize(torch.stack([emb[tr.labels[:4096] == c].mean(0) for c in range(N_CLASSES)]), dim=1)
    return comps, clf, tr, va


def _residual_adapter(comps: torch.Tensor, clf: torch.Tensor, k: int):
    from resi_dual.adapters.adapter import Adapter
    from resi_dual.adapters.cache import Projection
    from resi_dual.core.units import Composition

    comp = Composition("bench-vit-b32", "synthetic", L, H, D_MODEL, D_MODEL // H, D_OUT)
    labels = [u.label for u in comp.head_units]
    proj = Projection("units", labels, [k] * len(labels), comps, torch.zeros(len(labels), D_OUT), [])
    cfg = dict(variant="residual", source="units", units="heads", keep="", variance=0.9, mean_mode="drop", tied=False,
               init="ones", seed=0)
    return Adapter(cfg, proj, clf, 100.0, comp, [str(c) for c in range(N_CLASSES)], torch.zeros(len(comp)), {})


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def run() -> list[dict]:
    import os

    from resi_dual.adapters.modules import LinearAdapter, trainable_parameters
    from resi_dual.adapters.training import TrainConfig, fit, resolve_products

    rows = []
    n_batches = -(-N_TRAIN // BATCH)
    comps, clf, tr, va = _synthetic_splits(K_PER_HEAD)
    va1k = va.subset(torch.arange(1000))

    def one_epoch(hand: bool) -> float:
        ad = _residual_adapter(comps, clf, K_PER_HEAD)
        return fit(ad, tr, va1k, TrainConfig(max_epochs=1, progress=False, hand_gradient=hand)).seconds

    default_products = resolve_products("auto", torch.float32, (BATCH, comps.shape[0], D_OUT))  # measured, cached

    times: dict[str, list[float]] = {"backbone": [], "hand": [], "autograd": [], "floor": []}
    with tempfile.TemporaryDirectory() as tmp, torch_threads(1):
        model = _vit_b32(tmp)
        n_finetune = sum(p.numel() for p in model.library_model.parameters())
        g = torch.Generator().manual_seed(0)
        model.trace(torch.randn(8, 3, 224, 224, generator=g), check=False)  # warm-up
        one_epoch(True)
        load0 = os.getloadavg()[0]
        for _ in range(REPEATS):  # interleaved, single-threaded: both sides see the same load
            times["backbone"].append(_backbone_batch_seconds(model, g))
            times["hand"].append(one_epoch(True))
            times["autograd"].append(one_epoch(False))
            times["floor"].append(_bare_products_seconds(comps, n_batches, getattr(torch, default_products)))
        load1 = os.getloadavg()[0]
        del model
    t_batch = _median(times["backbone"])
    paper_epoch, ours_epoch = t_batch * n_batches, _median(times["hand"])
    load = f"load average {load0:.1f}–{load1:.1f} on {os.cpu_count()} cores"
    rows.append(dict(
        what=f"one training epoch, {N_TRAIN // 1000}k samples × {L * H} heads × {K_PER_HEAD} comps (1 thread, "
             f"{default_products} products)",
        ours=ours_epoch, baseline=paper_epoch, baseline_name=f"backbone+trace per batch ({t_batch:.2f} s/batch × {n_batches})",
        unit="s", ratio=paper_epoch / ours_epoch, target="≥ 300×", met=paper_epoch / ours_epoch >= 300,
        note=f"both single-threaded, interleaved, median of {REPEATS}; baseline scaled from timed batches of {BATCH} "
             f"at 224 px, adapter step excluded from it; {load}",
        reps=reps(ours=times["hand"], baseline_batch=times["backbone"])))
    auto = _median(times["autograd"])
    rows.append(dict(
        what=f"one epoch: hand-written λ-gradient ({default_products} products) vs float32 autograd loop (1 thread)",
        ours=ours_epoch, baseline=auto, baseline_name="autograd loop (hand_gradient=False)", unit="s",
        ratio=auto / ours_epoch, target="not slower (≥ 1×)", met=auto / ours_epoch >= 1,
        note=f"median of {REPEATS}, interleaved; autograd loop validates through the full forward; {load}",
        reps=reps(ours=times["hand"], autograd=times["autograd"])))
    floor = _median(times["floor"])
    rows.append(dict(
        what=f"one epoch vs its floor: the two {default_products} products per step alone (1 thread)",
        ours=ours_epoch, baseline=floor, baseline_name=f"{n_batches} × (mm 64×{comps.shape[0]}·{comps.shape[0]}×{D_OUT} "
                                                       f"+ mm 64×{D_OUT}·{D_OUT}×{comps.shape[0]})",
        unit="s", ratio=ours_epoch / floor, target="—", met=True,
        note="ratio = ours / floor (1 = nothing but the matmuls)", reps=reps(ours=times["hand"], floor=times["floor"])))

    # the full fit at the default products, then at float32; the process's thread count (fit picks 1 or n
    # per window); each against its floor, measured right after it
    threads = torch.get_num_threads()
    for products in dict.fromkeys([default_products, "float32"]):
        ad = _residual_adapter(comps, clf, K_PER_HEAD)
        l0 = os.getloadavg()[0]
        full = fit(ad, tr, va, TrainConfig(max_epochs=30, patience=30, progress=False, products=products))
        l1 = os.getloadavg()[0]
        floor_1, floor_n = _floor(comps, n_batches, getattr(torch, full.products))
        floor30 = 30 * min(floor_n, floor_1)
        default = products == default_products
        rows.append(dict(
            what=f"full 30-epoch residual fit, {N_TRAIN // 1000}k × {L * H} heads (val {N_VAL // 1000}k every epoch), "
                 f"{full.products} products" + (" (default here)" if default else ""),
            ours=full.seconds, baseline=30 * paper_epoch, baseline_name="30 epochs of backbone per batch (scaled)",
            unit="s", ratio=30 * paper_epoch / full.seconds, target="< 60 s" if default else "—",
            met=full.seconds < 60 if default else True,
            note=(f"{ad.n_trainable} λ, {full.epochs} epochs run (no extrapolation), {threads} torch threads; best val "
                  f"acc {full.best_val_accuracy:.4f} at epoch {full.best_epoch}; load average {l0:.1f}–{l1:.1f} on "
                  f"{os.cpu_count()} cores")))
        rows.append(dict(
            what=f"full 30-epoch fit ({full.products}) vs its floor: 30 × {n_batches} steps of the two products alone",
            ours=full.seconds, baseline=floor30, baseline_name=f"bare {full.products} products, faster of 1 and "
                                                               f"{threads} threads, ×30",
            unit="s", ratio=full.seconds / floor30, target="—", met=True,
            note=f"floor one epoch: {floor_1:.2f} s at 1 thread, {floor_n:.2f} s at {threads}; ratio = ours / floor"))

    head_comp, mlp_comp = D_MODEL // H + 2, D_OUT  # all components: min(n−1, d_in+2, d_out)
    counts = {
        "zeroshot": 0,
        "coarse": L * H,
        f"residual (k={K_PER_HEAD}/head)": L * H * K_PER_HEAD,
        "residual-full": L * H * head_comp + L * mlp_comp,
        "spectral": D_OUT,
        "linear": trainable_parameters(LinearAdapter(D_OUT)),
        "finetune": n_finetune,
    }
    for name, n in counts.items():
        rows.append(dict(what=f"trainable parameters: {name}", ours=float(n), baseline=float(n_finetune),
                         baseline_name="finetune (whole vision tower)", unit="params", ratio=n / n_finetune,
                         target="—", met=True, note=""))
    return rows
