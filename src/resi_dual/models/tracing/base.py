"""Exact residual tracing of a pre-LN vision transformer: the family-independent part.

A family module (``hf_clip``, ``blip``, ``vit``, ``dinov2``, ``openclip``) only says *where* the
residual terms live in the library's module tree (a :class:`Layout`) and how the library computes
its own image embedding (``_forward``); the layout and the readout built from it are in
:mod:`resi_dual.models.tracing.layout`. Capture and check are here, once:

* **Capture.** Inside :meth:`TracedModel.capture` (a context manager that removes every hook in
  ``finally``) we record, at the CLS token only:
  the input of block 0 (the embedding, after any pre-LN), the input of every attention output
  projection (the concatenated per-head outputs ``z_{l,h}``, d_head wide each), the output of every
  MLP branch after its layer scale, and the input of the final LayerNorm (the pre-LN residual, from
  which μ and σ = sqrt(var + ε) are computed). Nothing in torch is patched; a family that must
  reroute a module instance (open_clip's ``nn.MultiheadAttention``) does it on that instance only,
  restored in ``finally``. A hook that never fired raises.
* **Readout.** Built once from the weights by :func:`resi_dual.models.tracing.layout.build_readout`
  (the table of terms is there).
* **Check.** ``trace(check=True)`` verifies that Σ_u c_u equals the library's own embedding computed
  in the same forward pass, and that the raw residual terms sum to the captured pre-LN residual.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from resi_dual.errors import ResiDualError
from resi_dual.core.encodings import Readout, UnitEncodings, relative_error
from resi_dual.core.units import Composition
from resi_dual.models.tracing.layout import Layout, build_readout, head_projection, norm_eps

#: Largest relative decomposition error ``trace(check=True)`` accepts. The invariant holds to ~1e-6
#: in float32 on the tested families; the margin covers real checkpoints with large residual norms.
DEFAULT_TOLERANCE = 1e-4


def _cls(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """CLS row of a (n, T, D) (or (T, n, D)) activation, detached and copied; 2-d input is already pooled."""
    if x.dim() == 2:
        return x.detach().clone()
    return (x[:, 0] if batch_first else x[0]).detach().clone()


def prefixed_state(**modules: nn.Module | None) -> dict[str, torch.Tensor]:
    """``{f"{name}.{key}": tensor}`` over the state dicts of the named modules (None ones skipped),
    the keys a family hashes for :meth:`TracedModel.weights_hash`."""
    return {f"{name}.{k}": t for name, mod in modules.items() if mod is not None for k, t in mod.state_dict().items()}


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for key in ("hidden_states", "x", "q_x", "input", "query"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    raise ResiDualError("could not find the hidden states among a block's inputs")


class TracedModel:
    """A loaded vision transformer with exact residual tracing (the shared `load_model` interface).

    Attributes:
        spec: the spec string it was loaded from; family: tracer family name;
        composition: the units and convention; readout: per-unit linear readout (float32);
        image_size: side of the square pixel input; library_model: the full library object
        (with its text tower when the checkpoint has one); tokenizer: the library tokenizer or None;
        tolerance: largest relative decomposition error ``trace(check=True)`` accepts.
    """

    family: str = "?"
    #: ``cls`` (a linear read of the CLS token) or ``pooled`` (an attention probe: tracing/pooled.py)
    geometry: str = "cls"
    #: families whose position embeddings interpolate accept any multiple of the patch size
    flexible_size: bool = False

    def __init__(
        self,
        spec: str,
        library_model: nn.Module,
        preprocess: Callable[[list], torch.Tensor],
        image_size: int,
        tokenizer=None,
        convention: str = "paper",
        patch_size: int | None = None,
    ) -> None:
        self.spec = spec
        self.library_model = library_model.eval()
        self._preprocess = preprocess
        self.image_size = int(image_size)
        self.patch_size = patch_size
        self.tokenizer = tokenizer
        self.tolerance = DEFAULT_TOLERANCE
        self.layout = self._layout()
        lay = self.layout
        self.composition = Composition(
            spec, self.family, lay.n_layers, lay.n_heads, lay.d_model, lay.d_head, lay.d_out, convention,
            geometry=self.geometry,
        )
        self.readout = Readout.identity(self.composition) if self.geometry == "pooled" else build_readout(lay, convention)
        self._hash: str | None = None

    # -- to implement per family -----------------------------------------------------------
    def _layout(self) -> Layout:
        raise NotImplementedError

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The library's own plain image embedding (n, d_out), unnormalised."""
        raise NotImplementedError

    def _hashed_state(self) -> dict[str, torch.Tensor]:
        """Tensors that determine the image embedding (vision tower and projection)."""
        raise NotImplementedError

    # -- public interface -----------------------------------------------------------------
    @property
    def convention(self) -> str:
        return self.composition.convention

    @property
    def device(self) -> torch.device:
        """Where the library model's weights are (and so where its forward runs)."""
        p = next(self.library_model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> "TracedModel":
        """Move the library model (vision and any text tower) to ``device``; returns self.

        Only the forward pass runs there: pixels are moved in by :meth:`check_pixels`, and every
        result (encodings, embeddings, the readout) comes back as CPU tensors.
        """
        self.library_model.to(device)
        return self

    def preprocess(self, images: list) -> torch.Tensor:
        """(n, 3, H, W) float pixels from PIL images, with the checkpoint's own preprocessing (RGB)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        from resi_dual.core.images import to_rgb

        return self._preprocess([to_rgb(im) for im in images])

    def check_pixels(self, pixels) -> torch.Tensor:
        """Validate a pixel batch; returns it as float32 on the model's device. Raises ResiDualError
        naming the problem."""
        if not isinstance(pixels, torch.Tensor):
            raise ResiDualError(f"pixel values must be a torch tensor, got {type(pixels).__name__}")
        s = self.image_size
        shape = tuple(pixels.shape)
        ok = pixels.dim() == 4 and shape[1] == 3 and shape[0] > 0
        if ok and self.flexible_size and self.patch_size:
            ok = shape[2] % self.patch_size == 0 and shape[3] % self.patch_size == 0
            want = f"(n, 3, H, W) with H, W multiples of {self.patch_size} (e.g. {s})"
        else:
            ok = ok and shape[2] == s and shape[3] == s
            want = f"(n, 3, {s}, {s})"
        if not ok:
            raise ResiDualError(f"pixel tensor has shape {shape}; {self.spec} expects {want}")
        if not pixels.is_floating_point():
            raise ResiDualError(f"pixel tensor has dtype {pixels.dtype}; expected float (use model.preprocess)")
        return pixels.to(self.device, torch.float32, non_blocking=True)

    @torch.no_grad()
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, d_out) the library's own plain image forward (no hooks), unnormalised, on the CPU."""
        return self._forward(self.check_pixels(pixels)).float().cpu()

    @contextmanager
    def capture(self) -> Iterator[dict]:
        """Register the capture hooks; yields the dict they fill. All hooks are removed on exit."""
        lay = self.layout
        bf = lay.batch_first
        H, dh = lay.n_heads, lay.d_head
        store: dict = {"emb": None, "z": [None] * lay.n_layers, "mlp": [None] * lay.n_layers, "resid": None}
        handles = []
        swapped: list[tuple[nn.Module, object]] = []

        def emb_hook(_mod, args, kwargs):
            store["emb"] = _cls(_first_tensor(args, kwargs), bf)

        def z_hook(layer, norm):
            def hook(_mod, args):
                z = args[0]
                # the out-projection input is always batch-first here: (n, T, H·dh) -> CLS -> (n, H, dh)
                z = _cls(z, True)
                if norm is not None:  # a head norm is affine given this token's σ: store z/σ
                    z = z / (z.double().var(dim=-1, unbiased=False, keepdim=True) + norm_eps(norm)).sqrt().to(z.dtype)
                store["z"][layer] = z.view(z.shape[0], H, dh)

            return hook

        def mlp_hook(layer, scale):
            def hook(_mod, _args, output):
                out = output[0] if isinstance(output, tuple) else output
                store["mlp"][layer] = _cls(out, bf) if scale is None else _cls(out, bf) * scale.detach()

            return hook

        def resid_hook(_mod, args):
            if store["resid"] is None:  # BLIP applies its post-LN twice; the first call is the residual
                store["resid"] = _cls(args[0], True)

        try:
            for mod, fwd in lay.instance_forwards:
                swapped.append((mod, mod.__dict__.get("forward")))
                mod.forward = fwd
            handles.append(lay.blocks[0].register_forward_pre_hook(emb_hook, with_kwargs=True))
            for layer in range(lay.n_layers):
                norm = lay.head_norm[layer] if lay.head_norm else None
                z_at = lay.attn_out[layer] if norm is None else norm
                handles.append(z_at.register_forward_pre_hook(z_hook(layer, norm)))
                scale = lay.mlp_scale[layer] if lay.mlp_scale else None
                handles.append(lay.mlp_out[layer].register_forward_hook(mlp_hook(layer, scale)))
            handles.append(lay.final_norm.register_forward_pre_hook(resid_hook))
            yield store
        finally:
            for h in handles:
                h.remove()
            for mod, old in reversed(swapped):
                if old is None:
                    mod.__dict__.pop("forward", None)
                else:
                    mod.forward = old

    @torch.no_grad()
    def trace(self, pixels: torch.Tensor, check: bool = True) -> UnitEncodings:
        """Unit encodings of a preprocessed batch (n, 3, H, W).

        Returns a :class:`UnitEncodings` whose ``contributions()`` (n, U, d_out) sum over units to
        ``output``, the library's own embedding from the same forward pass. With ``check`` the
        relative error is verified against :attr:`tolerance` (raises ResiDualError if exceeded).
        """
        pixels = self.check_pixels(pixels)
        with self.capture() as store:
            output = self._forward(pixels)
        return self.encodings_from(store, output, check)

    def encodings_from(self, store: dict, output: torch.Tensor, check: bool = True) -> UnitEncodings:
        """The :class:`UnitEncodings` of a filled :meth:`capture` store and the forward's output."""
        missing = [name for name, v in (("embedding", store["emb"]), ("final LayerNorm", store["resid"])) if v is None]
        missing += [f"L{i} attention output" for i, v in enumerate(store["z"]) if v is None]
        missing += [f"L{i} MLP" for i, v in enumerate(store["mlp"]) if v is None]
        if missing:
            raise ResiDualError(
                f"{self.family} tracer: hooks never fired for {', '.join(missing[:4])}"
                f"{' …' if len(missing) > 4 else ''} (unsupported library version or model variant)"
            )
        # results live on the CPU whatever the device (the readout is a CPU tensor too)
        dense = torch.stack([store["emb"], *store["mlp"]], dim=1).float().cpu()  # (n, 1+L, D)
        heads = torch.stack(store["z"], dim=1).float().cpu()  # (n, L, H, dh)
        resid = store["resid"].double().cpu()  # (n, D)
        output = output.float().cpu()
        eps = float(getattr(self.layout.final_norm, "eps", 1e-5))
        mu = resid.mean(dim=-1)
        sigma = (resid.var(dim=-1, unbiased=False) + eps).sqrt()
        enc = UnitEncodings(self.composition, self.readout, dense, heads, mu.float(), sigma.float(), output.float())
        if check:
            self._check(enc, resid)
        return enc

    def _check(self, enc: UnitEncodings, resid: torch.Tensor) -> None:
        err = float(relative_error(self.summed_contributions(enc), enc.output).max())
        rerr = float(self.residual_error(enc, resid).max())
        if not (err <= self.tolerance and rerr <= self.tolerance):  # also catches NaN
            raise ResiDualError(
                f"decomposition of {self.spec} is off: relative error {err:.2e} in output space, "
                f"{rerr:.2e} in the residual (tolerance {self.tolerance:.0e})"
            )

    @torch.no_grad()
    def summed_contributions(self, enc: UnitEncodings) -> torch.Tensor:
        """(n, d_out) Σ_u c_u without materialising the (n, U, d_out) tensor: the readout is linear,
        so the units' raw terms are summed first (two float32 GEMMs; affine terms in float64).
        This is the cheap runtime check; ``enc.relative_error()`` is the float64 per-unit reference."""
        r = self.readout
        lin = enc.dense.sum(dim=1) @ r.dense_weight.T  # (n, d_out)
        lin = lin + enc.heads.flatten(1) @ r.head_weight_flat
        sigma, mu = enc.sigma.double()[:, None], enc.mu.double()[:, None]
        total = (lin.double() + r.inv_sigma.double().sum(0)) / sigma
        return total + r.mu_over_sigma.double().sum(0) * (mu / sigma) + r.const.double().sum(0)

    @torch.no_grad()
    def residual_error(self, enc: UnitEncodings, resid: torch.Tensor) -> torch.Tensor:
        """(n,) ``‖Σ raw residual terms − captured pre-LN residual‖ / ‖residual‖`` (float32 sums)."""
        lay = self.layout
        total = enc.dense.sum(dim=1)  # (n, D)
        for layer in range(lay.n_layers):
            w, b = head_projection(lay, layer, torch.float32)
            term = torch.nn.functional.linear(enc.heads[:, layer].flatten(1), w, b)
            if lay.attn_scale[layer] is not None:
                term = term * lay.attn_scale[layer].detach().cpu()
            total = total + term
        return relative_error(total, resid)

    def weights_hash(self) -> str:
        """sha256 (hex) of the tensors that determine the image embedding; cached."""
        if self._hash is None:
            h = hashlib.sha256()
            for name, t in sorted(self._hashed_state().items()):
                t = t.detach().to("cpu").contiguous()
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
                h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
            self._hash = h.hexdigest()
        return self._hash

    def __repr__(self) -> str:
        c = self.composition
        return (
            f"{type(self).__name__}({self.spec!r}, family={self.family}, L={c.n_layers}, H={c.n_heads}, "
            f"d_model={c.d_model}, d_head={c.d_head}, d_out={c.d_out}, convention={c.convention})"
        )
