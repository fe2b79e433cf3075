"""What a ViT looked at: attention maps, rollout, gradient-weighted attention, Grad-CAM, overlays,
and the perturbation test that measures how faithful a map is.

    e = explain(model, x)                      # x: one preprocessed image, [1, 3, H, W]
    e.heatmap                                  # [grid_h, grid_w] in [0, 1], one value per patch
    overlay(image, e.heatmap, box=box)         # the map over the original image

Methods (METHODS lists them with a one-line description):
  chefer     gradient-weighted attention relevance for a class (Chefer et al. 2021, "Generic
             Attention-model Explainability"): the class-specific default
  rollout    attention rollout (Abnar & Zuidema 2020), head fusion mean/max/min, discard ratio
  attention  raw attention of the last layer from the classifier token, per head and averaged:
             attention, not an explanation
  gradcam    Grad-CAM on the tokens entering the last block, prefix tokens dropped; for a CNN (resnet,
             convnext, ...) on its last stage's feature map, the one method that applies to it

Every timm VisionTransformer layout works: a class token, a distillation token (read with the
class token, as DeiT's two heads are averaged), register tokens (dropped), no class token
(global average pooling: the readers are the patch tokens themselves), any image and patch size
and non-square grids (from the patch embedding, never sqrt(N)). Nothing here knows about runs
or the UI: a model and a tensor in, maps out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

METHODS = {
    "chefer": "Gradient-weighted attention (Chefer et al. 2021): which patches made the model choose this class.",
    "rollout": "Attention rollout (Abnar & Zuidema 2020): attention followed through every layer; not class-specific.",
    "attention": "Raw attention of the last layer from the token(s) the head reads (the classifier token; without one, "
                 "the patch tokens averaged). Attention, not an explanation: by the "
                 "last layer every token carries information from the whole image, so it often points at background.",
    "gradcam": "Grad-CAM on the tokens entering the last block (a CNN: its last stage): class-specific, coarse.",
}
DEFAULT_METHOD = "chefer"
HEAD_FUSIONS = ("mean", "max", "min")
COLORMAPS = ("turbo", "inferno", "gray")


class ExplainError(ValueError):
    """A map cannot be made for this model or input; the message says why."""


@dataclass
class Layout:
    """Where the patch tokens are in a ViT's sequence and which tokens the head reads."""

    prefix: int                  # tokens before the patches: class, distillation, registers
    readers: list[int] | None    # token rows the classifier reads; None: every patch (average pooling)
    grid: tuple[int, int]        # patch grid (rows, columns)
    note: str = ""
    registers: int = 0           # register tokens among the prefix (left out of every map)


@dataclass
class Explanation:
    method: str
    target: int
    heatmap: np.ndarray                      # [grid_h, grid_w], float32 in [0, 1]
    probs: np.ndarray                        # class probabilities of the same forward pass
    heads: np.ndarray | None = None          # [heads, grid_h, grid_w] for "attention"
    notes: list[str] = field(default_factory=list)


_POOLS = {"avg": "average", "max": "max", "avgmax": "average and max", "map": "attention"}


def token_layout(model: torch.nn.Module, input_hw: tuple[int, int]) -> Layout:
    """The token layout of a timm VisionTransformer for an input of size input_hw."""
    if not (hasattr(model, "blocks") and hasattr(model, "patch_embed")):
        raise ExplainError(f"{type(model).__name__} is not a ViT with attention blocks; heatmaps need one.")
    pe = model.patch_embed
    grid = tuple(pe.dynamic_feat_size(tuple(input_hw))) if hasattr(pe, "dynamic_feat_size") else tuple(pe.grid_size)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    has_cls = bool(getattr(model, "has_class_token", getattr(model, "cls_token", None) is not None))
    distilled = getattr(model, "dist_token", None) is not None
    registers = prefix - int(has_cls) - int(distilled)
    pool = getattr(model, "global_pool", "token")
    if has_cls and pool == "token":
        readers, note = [0, 1] if distilled else [0], ("class and distillation tokens" if distilled else
                                                       "class token")
    else:
        readers, note = None, (f"no class token read by the head (global {_POOLS.get(pool, pool)} pooling): maps "
                               "show what the patch tokens, averaged, drew on")
    if registers:
        note += f"; {registers} register tokens left out"
    return Layout(prefix, readers, grid, note, registers)


def explain(model: torch.nn.Module, x: torch.Tensor, method: str = DEFAULT_METHOD, target: int | None = None, *,
            head_fusion: str = "mean", discard_ratio: float = 0.0, layer: int = -1,
            head: int | None = None) -> Explanation:
    """A heatmap for one preprocessed image x [1, 3, H, W]; target defaults to the predicted class.
    For "attention", `layer` picks the block (-1: the last) and `head` one head (None: their mean)."""
    if method not in METHODS:
        raise ExplainError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if head_fusion not in HEAD_FUSIONS:
        raise ExplainError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}.")
    if not 0.0 <= discard_ratio < 1.0:
        raise ExplainError("discard_ratio must be in [0, 1).")
    if x.dim() != 4 or x.shape[0] != 1:
        raise ExplainError("explain() takes one image: a tensor of shape [1, 3, H, W].")
    if not is_transformer(model):
        return _cnn_gradcam(model, x, method, target)
    layout = token_layout(model, tuple(x.shape[-2:]))
    gradients = method in ("chefer", "gradcam")
    was_training = model.training
    if was_training:  # eval() walks every module: a loaded model is in eval mode already, and skips it
        model.eval()
    try:
        with _Recorder(model, attention=method != "gradcam", tokens=method == "gradcam") as rec, \
                torch.enable_grad() if gradients else torch.inference_mode():
            x = x.detach().requires_grad_(gradients)
            logits = model(x)
            probs = logits.detach().float().softmax(-1)[0]
            target = int(probs.argmax()) if target is None else int(target)
            if not 0 <= target < probs.numel():
                raise ExplainError(f"Class index {target} is out of range: the model has {probs.numel()} classes.")
            heads = None
            if method == "attention":
                depth = len(rec.attentions)
                if not -depth <= layer < depth:
                    raise ExplainError(f"Layer {layer} does not exist: the model has {depth} blocks "
                                       f"(use 0..{depth - 1}, or -1 for the last).")
                heatmap, heads = _last_attention(rec.attentions[layer][0], layout)
                if head is not None:
                    if not 0 <= head < heads.shape[0]:
                        raise ExplainError(f"Head {head} does not exist: the layer has {heads.shape[0]} heads.")
                    heatmap = heads[head]
            elif method == "rollout":
                heatmap = _rollout([a[0] for a in rec.attentions], layout, head_fusion, discard_ratio)
            elif method == "chefer":
                grads = torch.autograd.grad(logits[0, target], rec.attentions)
                heatmap = _chefer([a[0].detach() for a in rec.attentions], [g[0] for g in grads], layout)
            else:
                (grad,) = torch.autograd.grad(logits[0, target], [rec.tokens])
                heatmap = _gradcam(rec.tokens[0].detach(), grad[0], layout)
    finally:
        if was_training:
            model.train()
    notes = [layout.note] if layout.readers is None or layout.registers else []
    if method == "rollout":
        notes.append("Rollout is the same for every class.")
    grid = layout.grid
    return Explanation(method, target, _normalise(heatmap.reshape(grid)), probs.cpu().numpy(),
                       None if heads is None else np.stack([_normalise(h.reshape(grid)) for h in heads]), notes)


def overlay(image: Image.Image, heatmap: np.ndarray, *, box: tuple[float, float, float, float] | None = None,
            opacity: float = 0.5, colormap: str = "turbo") -> Image.Image:
    """The heatmap in colour over the image, at the image's own size.

    `box` is the region of the image the model saw (left, top, right, bottom), e.g. the centre crop
    of timm's eval transform; outside it the image is dimmed, since the map says nothing there.
    """
    if colormap not in COLORMAPS:
        raise ExplainError(f"colormap must be one of {', '.join(COLORMAPS)}.")
    opacity = float(np.clip(opacity, 0.0, 1.0))
    image = image.convert("RGB")
    w, h = image.size
    left, top, right, bottom = box or (0, 0, w, h)
    bw, bh = max(1, round(right - left)), max(1, round(bottom - top))
    heat = torch.from_numpy(np.asarray(heatmap, dtype=np.float32))[None, None]
    heat = F.interpolate(heat, size=(bh, bw), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    coloured = (_colour(heat, colormap) * 255).astype(np.float32)
    base = np.asarray(image, dtype=np.float32)
    out = base * (0.45 if box else 1.0)  # outside the box: dimmed
    x0, y0 = round(left), round(top)
    xs, ys = slice(max(0, x0), min(w, x0 + bw)), slice(max(0, y0), min(h, y0 + bh))
    inner = coloured[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    out[ys, xs] = base[ys, xs] * (1 - opacity) + inner * opacity
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def figure(image: Image.Image, heatmap: np.ndarray, *, box: tuple[float, float, float, float] | None = None,
           opacity: float = 0.5, colormap: str = "turbo", height: int = 360) -> Image.Image:
    """The image and its overlay side by side at a readable size, the region the model saw outlined on the
    image, and a colour bar below that says which end of the colours means more."""
    from PIL import ImageDraw, ImageFont
    image = image.convert("RGB")
    shown = overlay(image, heatmap, box=box, opacity=opacity, colormap=colormap)
    scale = height / image.height
    w = max(1, round(image.width * scale))
    left, right = image.resize((w, height), Image.BILINEAR), shown.resize((w, height), Image.BILINEAR)
    gap, bar_h, text_h = 12, 14, 22
    out = Image.new("RGB", (2 * w + gap, height + bar_h + text_h + 8), "white")
    out.paste(left, (0, 0))
    out.paste(right, (w + gap, 0))
    if box:
        d = ImageDraw.Draw(out)
        x0, y0, x1, y1 = (round(v * scale) for v in box)
        for inset, colour in ((0, "black"), (1, "white"), (2, "black")):
            d.rectangle([x0 + inset, y0 + inset, x1 - 1 - inset, y1 - 1 - inset], outline=colour)
    ramp = np.linspace(0, 1, w)[None, :].repeat(bar_h, 0)
    out.paste(Image.fromarray((_colour(ramp, colormap) * 255).astype(np.uint8)), (w + gap, height + 4))
    d = ImageDraw.Draw(out)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:
        font = ImageFont.load_default()
    d.text((w + gap, height + bar_h + 6), "less", fill="#333", font=font)
    d.text((2 * w + gap, height + bar_h + 6), "more relevant", fill="#333", font=font, anchor="ra")
    d.text((0, height + 4), "the model saw the outlined region" if box else "the whole image", fill="#333",
           font=font)
    return out


def colour_heatmap(heatmap: np.ndarray, size: tuple[int, int], colormap: str = "turbo") -> Image.Image:
    """The heatmap alone, in colour, resized to size (w, h): for per-head galleries."""
    heat = torch.from_numpy(np.asarray(heatmap, dtype=np.float32))[None, None]
    heat = F.interpolate(heat, size=(size[1], size[0]), mode="nearest")[0, 0].numpy()
    return Image.fromarray((_colour(heat, colormap) * 255).astype(np.uint8))


# ---------------------------------------------------------------------------
# faithfulness: the perturbation test of Chefer et al.

FRACTIONS = tuple(round(0.1 * i, 1) for i in range(10))  # 0.0 ... 0.9 of the pixels removed


@torch.no_grad()
def perturbation_curve(model: torch.nn.Module, x: torch.Tensor, heatmap: np.ndarray, target: int, *,
                       most_relevant_first: bool = True, fractions: tuple[float, ...] = FRACTIONS) -> np.ndarray:
    """Probability of `target` as growing fractions of the pixels are removed (set to the dataset mean,
    0 after normalisation) in the order the heatmap ranks them.

    most_relevant_first=True is the positive perturbation ("deletion"): a faithful map makes the
    probability fall fast, so a lower area is better. False removes the least relevant pixels first
    (negative perturbation): a faithful map keeps the probability up, so a higher area is better.
    """
    h, w = x.shape[-2:]
    heat = torch.from_numpy(np.asarray(heatmap, dtype=np.float32))[None, None]
    heat = F.interpolate(heat, size=(h, w), mode="bilinear", align_corners=False).flatten()
    heat = heat + torch.rand(heat.shape, generator=torch.Generator().manual_seed(0)) * 1e-6  # break ties
    order = heat.argsort(descending=most_relevant_first)
    batch = x.detach().repeat(len(fractions), 1, 1, 1)
    for i, f in enumerate(fractions):
        removed = order[:int(round(f * h * w))]
        flat = batch[i].view(batch.shape[1], -1)
        flat[:, removed] = 0.0
    was_training = model.training
    model.eval()
    probs = model(batch).float().softmax(-1)[:, target]
    model.train(was_training)
    return probs.cpu().numpy()


def area(curve: np.ndarray, fractions: tuple[float, ...] = FRACTIONS) -> float:
    """Area under a perturbation curve over the fractions removed."""
    return float(np.trapezoid(curve, fractions))


def is_transformer(model: torch.nn.Module) -> bool:
    """Whether a model has attention blocks over patch tokens (else a CNN: Grad-CAM on its last stage only)."""
    return hasattr(model, "blocks") and hasattr(model, "patch_embed")


NEEDS_ATTENTION = {"chefer": "Gradient-weighted attention", "rollout": "Attention rollout",
                   "attention": "Raw attention"}


def _cnn_gradcam(model: torch.nn.Module, x: torch.Tensor, method: str, target: int | None) -> Explanation:
    """Grad-CAM (Selvaraju et al. 2017) on a CNN's last stage: its feature map weighted by the class score's mean
    gradient per channel. The attention methods refuse, naming why."""
    name = model.pretrained_cfg.get("architecture", type(model).__name__) if hasattr(model, "pretrained_cfg") \
        else type(model).__name__
    if method != "gradcam":
        raise ExplainError(f"{NEEDS_ATTENTION[method]} reads a ViT's attention, and {name} is a CNN, which has none. "
                           "Use Grad-CAM: it works on a CNN's last stage.")
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise ExplainError(f"{name} has no forward_features/forward_head (timm's), so its last stage cannot be read.")
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with torch.enable_grad():
            features = model.forward_features(x.detach())
            if features.dim() != 4:
                raise ExplainError(f"{name}'s last stage is not a feature map [1, C, H, W]; Grad-CAM needs one.")
            logits = model.forward_head(features)
            probs = logits.detach().float().softmax(-1)[0]
            target = int(probs.argmax()) if target is None else int(target)
            if not 0 <= target < probs.numel():
                raise ExplainError(f"Class index {target} is out of range: the model has {probs.numel()} classes.")
            (grad,) = torch.autograd.grad(logits[0, target], [features])
    finally:
        if was_training:
            model.train()
    acts, grad = features[0].detach().float(), grad[0].float()
    cam = (acts * grad.mean((1, 2))[:, None, None]).sum(0).clamp(min=0)
    h, w = cam.shape
    return Explanation("gradcam", target, _normalise(cam), probs.cpu().numpy(), None,
                       [f"Grad-CAM on the CNN's last stage: a {h}x{w} map, each cell {x.shape[-1] // max(w, 1)} px "
                        f"of the model's {x.shape[-1]}-px input."])


# ---------------------------------------------------------------------------
# helpers


class _Recorder:
    """Record the attention probabilities of every block (fused attention off meanwhile) and/or the
    tokens entering the last block's attention (for Grad-CAM)."""

    def __init__(self, model: torch.nn.Module, attention: bool, tokens: bool):
        self.model, self.want_attention, self.want_tokens = model, attention, tokens
        self.attentions: list[torch.Tensor] = []
        self.tokens: torch.Tensor | None = None
        self._handles, self._fused = [], []

    def __enter__(self) -> "_Recorder":
        blocks = list(self.model.blocks)
        for blk in blocks:
            attn = getattr(blk, "attn", None)
            if attn is None or not hasattr(attn, "attn_drop"):
                self.__exit__()
                raise ExplainError(f"Block type {type(blk).__name__} exposes no attention probabilities; "
                                   "heatmaps support timm VisionTransformer-style blocks.")
            if self.want_attention:
                self._fused.append((attn, getattr(attn, "fused_attn", False)))
                attn.fused_attn = False
                self._handles.append(attn.attn_drop.register_forward_hook(
                    lambda _m, _i, out: self.attentions.append(out)))
        if self.want_tokens:
            self._handles.append(blocks[-1].norm1.register_forward_hook(lambda _m, _i, out: setattr(
                self, "tokens", out)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        for attn, fused in self._fused:
            attn.fused_attn = fused
        self._handles, self._fused = [], []


def _reader_rows(matrix: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Rows of a [..., T, T] matrix read by the head, averaged, over the patch columns: [..., N]."""
    patches = matrix[..., layout.prefix:]
    if layout.readers is None:
        return patches[..., layout.prefix:, :].mean(-2)
    return patches[..., layout.readers, :].mean(-2)


def _last_attention(attn: torch.Tensor, layout: Layout):
    heads = _reader_rows(attn.detach().float(), layout)  # [heads, N]
    return heads.mean(0), heads


def _rollout(attentions: list[torch.Tensor], layout: Layout, fusion: str, discard_ratio: float) -> torch.Tensor:
    """Abnar & Zuidema's rollout: the product over the layers of 0.5 A + 0.5 I, each row normalised, A being the
    layer's attention with its heads fused. Only the readers' rows of the product are needed: they are carried
    from the last layer down, without forming the identity or the mixed matrices (T^2 per layer)."""
    if layout.readers is not None and fusion == "mean" and not discard_ratio:  # the default, and the fastest:
        # softmax rows sum to 1, so 0.5 A + 0.5 I needs no normalising, and the heads' mean can follow the product
        rows = _reader_basis(layout, attentions[0].shape[-1])
        for a in reversed(attentions):
            rows = 0.5 * (rows @ a.detach().float()).mean(0) + 0.5 * rows
        return rows[:, layout.prefix:].mean(0)
    fused = [_fuse_heads(a.detach().float(), fusion) for a in attentions]   # [T, T] per layer
    if discard_ratio > 0:
        fused = [_discard_weakest(f, layout, discard_ratio) for f in fused]
    tokens = fused[0].shape[-1]
    if layout.readers is None:  # every patch reads: the whole product, less each patch's path to itself
        eye = torch.eye(tokens)
        result = eye
        for f in fused:
            mixed = 0.5 * f + 0.5 * eye
            result = (mixed / mixed.sum(-1, keepdim=True)) @ result
        return _reader_rows(result * (1 - eye), layout)
    rows = _reader_basis(layout, tokens)
    for f in reversed(fused):  # rows @ diag(1/s) (0.5 F + 0.5 I), s the row sums of 0.5 F + 0.5 I
        scaled = rows / (0.5 * f.sum(-1) + 0.5)
        rows = 0.5 * (scaled @ f) + 0.5 * scaled
    return rows[:, layout.prefix:].mean(0)


def _reader_basis(layout: Layout, tokens: int) -> torch.Tensor:
    """The readers' rows of the identity: [readers, T]."""
    rows = torch.zeros(len(layout.readers), tokens)
    rows[torch.arange(len(layout.readers)), layout.readers] = 1.0
    return rows


def _fuse_heads(attention: torch.Tensor, fusion: str) -> torch.Tensor:
    """[heads, T, T] -> [T, T]."""
    if fusion == "mean":
        return attention.mean(0)
    return attention.amax(0) if fusion == "max" else attention.amin(0)


def _discard_weakest(fused: torch.Tensor, layout: Layout, ratio: float) -> torch.Tensor:
    """Zero the weakest links of a layer, never a token's link to the readers."""
    flat = fused.flatten()
    drop = torch.zeros_like(flat, dtype=torch.bool)
    drop[flat.topk(int(flat.numel() * ratio), largest=False).indices] = True
    drop = drop.view_as(fused)
    if layout.readers is not None:
        drop[:, layout.readers] = False
    return fused.masked_fill(drop, 0)


def _chefer(attentions: list[torch.Tensor], grads: list[torch.Tensor], layout: Layout) -> torch.Tensor:
    tokens = attentions[0].shape[-1]
    relevance = torch.eye(tokens)
    for attn, grad in zip(attentions, grads):
        cam = (grad.float() * attn.float()).clamp(min=0).mean(0)
        relevance = relevance + cam @ relevance
    return _reader_rows(relevance - torch.eye(tokens), layout)


def _gradcam(tokens: torch.Tensor, grad: torch.Tensor, layout: Layout) -> torch.Tensor:
    acts, grads = tokens[layout.prefix:].float(), grad[layout.prefix:].float()  # every prefix token dropped
    weights = grads.mean(0)
    return (acts * weights).sum(-1).clamp(min=0)


def _normalise(m: torch.Tensor | np.ndarray) -> np.ndarray:
    m = torch.as_tensor(m).float()
    m = torch.nan_to_num(m, nan=0.0)
    m = m - m.min()
    top = m.max()
    return (m / top if top > 0 else torch.zeros_like(m)).numpy().astype(np.float32)


def _colour(x: np.ndarray, name: str) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] in [0, 1]."""
    x = np.clip(x, 0.0, 1.0)[..., None]
    if name == "gray":
        return np.repeat(x, 3, axis=-1)
    if name == "turbo":  # Google's polynomial fit of the Turbo colormap
        r = 0.13572138 + x * (4.61539260 + x * (-42.66032258 + x * (132.13108234 + x * (-152.94239396 + x * 59.28637943))))  # noqa: E501
        g = 0.09140261 + x * (2.19418839 + x * (4.84296658 + x * (-14.18503333 + x * (4.27729857 + x * 2.82956604))))
        b = 0.10667330 + x * (12.64194608 + x * (-60.58204836 + x * (110.36276771 + x * (-89.90310912 + x * 27.34824973))))  # noqa: E501
        return np.clip(np.concatenate([r, g, b], axis=-1), 0, 1)
    stops = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]]) / 255.0  # inferno
    pos = x[..., 0] * (len(stops) - 1)
    i = np.clip(pos.astype(int), 0, len(stops) - 2)
    t = (pos - i)[..., None]
    return stops[i] * (1 - t) + stops[i + 1] * t
