"""The catalog of timm Vision Transformers (and of CNNs to teach them) and one way to create any timm model.

    model = create_model(ModelSpec("vit_tiny_patch16_224.augreg_in21k_ft_in1k"), num_classes=3)

Weights come from timm's pretrained weights on the Hugging Face Hub, a local
weights file, a timm-format folder (config.json + model.safetensors, which is
what a run directory is), an `hf-hub:` id, or random init when asked for
("from scratch"). A failed download is a `ModelError` that says how to supply
weights; random init is never a silent fallback. Image and patch size can
differ from the pretrained ones: timm resamples position and patch embeddings.
Models are created with fused attention for speed; `set_fused_attention(model,
False)` exposes attention maps for explanations.
"""
from __future__ import annotations

import difflib
import functools
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# timm (and torch under it) is imported where a model is made or named, not with this module: the web page
# lists the catalog and starts without them (bench/app_bench.py).


class ModelError(ValueError):
    """A model cannot be created; the message says why and what to do."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str           # timm name with pretrained tag
    title: str
    params_m: float     # millions of parameters (backbone + 1000-class head)
    img_size: int       # image size we train at by default
    device: str         # "CPU" (trains on a laptop) or "GPU" (wants one)
    note: str


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("vit_tiny_patch16_224.augreg_in21k_ft_in1k", "ViT-Tiny/16 (AugReg)", 5.7, 224, "CPU",
                 "Default. Small and quick; fine-tunes on a laptop CPU in minutes."),
    CatalogEntry("deit_tiny_distilled_patch16_224.fb_in1k", "DeiT-Tiny/16 distilled", 5.9, 224, "CPU",
                 "Tiny ViT trained with a distillation token; CPU-friendly."),
    CatalogEntry("vit_small_patch16_224.augreg_in21k_ft_in1k", "ViT-Small/16 (AugReg)", 22.1, 224, "CPU",
                 "More accurate than Tiny; trains on CPU, faster on a GPU."),
    CatalogEntry("deit_small_patch16_224.fb_in1k", "DeiT-Small/16", 22.1, 224, "CPU",
                 "ImageNet-1k only pretraining (DeiT recipe); CPU is slow but workable."),
    CatalogEntry("vit_small_patch14_dinov2.lvd142m", "DINOv2 ViT-S/14", 22.1, 224, "GPU",
                 "Self-supervised DINOv2 features, strong on unusual domains; no CLS head pretrained."),
    CatalogEntry("vit_small_patch14_reg4_dinov2.lvd142m", "DINOv2 ViT-S/14 + 4 registers", 22.1, 224, "GPU",
                 "DINOv2 with register tokens: cleaner attention maps."),
    CatalogEntry("vit_base_patch16_224.augreg2_in21k_ft_in1k", "ViT-Base/16 (AugReg2)", 86.6, 224, "GPU",
                 "Best accuracy here; wants a GPU."),
)
# CNNs to fine-tune (or train from scratch) as teachers: DeiT's finding is that a ViT learns more from a convolutional
# teacher, whose built-in locality suits small data, than from the labels alone (vit.train.teacher)
TEACHERS: tuple[CatalogEntry, ...] = (
    CatalogEntry("resnet18.a1_in1k", "ResNet-18 (CNN)", 11.7, 224, "CPU",
                 "A small CNN teacher; fine-tunes on a laptop CPU."),
    CatalogEntry("efficientnet_b0.ra_in1k", "EfficientNet-B0 (CNN)", 5.3, 224, "CPU",
                 "A compact CNN teacher, accurate for its size; CPU is workable."),
    CatalogEntry("convnext_tiny.in12k_ft_in1k", "ConvNeXt-Tiny (CNN)", 28.6, 224, "GPU",
                 "A strong modern CNN teacher (ImageNet-22k); wants a GPU."),
    CatalogEntry("regnety_160.deit_in1k", "RegNetY-16GF (CNN, DeiT's teacher)", 83.6, 224, "GPU",
                 "The teacher of the DeiT paper, as its authors trained it; a GPU teacher."),
)
DEFAULT_MODEL = CATALOG[0].name


@dataclass
class ModelSpec:
    """What to build. `name` is a timm name, `hf-hub:user/repo` or `local-dir:/path`."""

    name: str = DEFAULT_MODEL
    pretrained: bool = True
    weights: str | None = None          # a weights file, a timm-format folder or a run directory
    img_size: int | None = None         # None: the catalog's (or the model's) default
    patch_size: int | None = None       # None: the model's own
    model_args: dict = field(default_factory=dict)  # more timm kwargs, e.g. depth=4 for a small model


def create_model(spec: ModelSpec, num_classes: int) -> nn.Module:
    """Create the model `spec` describes with a fresh `num_classes` head (kept if it already fits)."""
    import timm
    name, kwargs = _resolve(spec)
    kwargs["num_classes"] = num_classes
    try:
        return timm.create_model(name, **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        if isinstance(e, RuntimeError) and "Unknown model" in str(e):
            raise ModelError(unknown_model_message(name)) from None
        if kwargs.get("pretrained"):
            raise ModelError(_weights_message(spec, e)) from None
        raise ModelError(f"Cannot create {name}: {e}") from None


def offline() -> bool:
    """Whether downloads from the Hub are switched off (HF_HUB_OFFLINE): huggingface_hub's own reading,
    the one that decides whether it downloads."""
    from huggingface_hub import constants
    return constants.is_offline_mode()


def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether pretrained weights can be downloaded: not in offline mode, and the Hub answers a TCP connect."""
    if offline():
        return False
    import socket
    from urllib.parse import urlparse
    from huggingface_hub import constants
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def check_model_name(name: str) -> str:
    """Return `name` if timm knows it (tag allowed), else raise ModelError with suggestions."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return name
    import timm
    if not timm.is_model(name):
        raise ModelError(unknown_model_message(name))
    return name


def check_web_model_name(name: str) -> str:
    """check_model_name for a name a visitor typed into the web app: a timm name or an hf-hub id, never a
    local folder (local-dir: and paths could read any folder on the server, other visitors' runs included)."""
    name = (name or "").strip()
    if name.startswith("hf-hub:"):
        check_hub_id(name[len("hf-hub:"):])
        return name
    if name.startswith("local-dir:") or "/" in name or "\\" in name or len(name) > 200:
        raise ModelError("The app takes a model from its catalog, any timm name (e.g. vit_small_patch16_224), or "
                         "hf-hub:user/repo; local folders can be used from the command line only.")
    return check_model_name(name)


def unknown_model_message(name: str) -> str:
    import timm
    arch = name.split(".")[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (f"timm does not know the model '{name}'.{hint} Pick one from the catalog, or any name from "
            "timm.list_models() (ViTs: 'vit*', CNNs: 'resnet*', 'convnext*', ...).")


def catalog_entry(name: str) -> CatalogEntry | None:
    return next((e for e in (*CATALOG, *TEACHERS) if e.name == name), None)


def data_config(model: nn.Module) -> dict:
    """timm's preprocessing for this model as built (its actual input size): input_size, mean, std,
    interpolation, crop_pct."""
    from timm.data.model_config import resolve_input_data_config
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)  # as built (timm would give a model
    args = {"input_size": (3, *size)} if size else None                  # with dynamic_img_size its source's)
    return resolve_input_data_config(model, args=args)


def set_fused_attention(model: nn.Module, enabled: bool) -> int:
    """Switch every attention block between fused SDPA (fast) and explicit softmax (attention readable).

    Returns how many attention modules were switched.
    """
    n = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = enabled
            n += 1
    return n


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _resolve(spec: ModelSpec) -> tuple[str, dict]:
    """timm.create_model's name and kwargs for a spec."""
    kwargs: dict = dict(spec.model_args)
    name = spec.name
    if spec.weights:
        weights = Path(spec.weights)
        if weights.is_dir():
            if not (weights / "config.json").is_file():
                raise ModelError(f"{weights} has no config.json: it is not a timm-format model folder or a run "
                                 "directory. Give the folder that holds config.json and model.safetensors.")
            name, pretrained = f"local-dir:{weights}", True
        elif weights.is_file():
            check_model_name(name)
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
            pretrained = True
        else:
            raise ModelError(f"Weights file {weights} does not exist.")
    else:
        check_model_name(name)
        pretrained = spec.pretrained
    kwargs["pretrained"] = pretrained
    entry = catalog_entry(name)
    img_size = spec.img_size or (entry.img_size if entry else None)
    arch = architecture(name)
    if spec.patch_size and not arch.tokens:
        raise ModelError(f"A patch size applies to a ViT; {name} is a {arch.kind}, which has no patches. Leave the "
                         "patch size empty.")
    if img_size and arch.tokens:
        kwargs["img_size"] = img_size
    elif img_size:  # a CNN takes any size: its input size is its preprocessing's (and its config.json's)
        kwargs["pretrained_cfg_overlay"] = {**kwargs.get("pretrained_cfg_overlay", {}),
                                            "input_size": (3, img_size, img_size)}
    if spec.patch_size:
        kwargs["patch_size"] = spec.patch_size
    return name, kwargs


@dataclass(frozen=True)
class Architecture:
    """What kind of network a model name builds, as far as training and explaining it differ.

    kind      "ViT" (timm's VisionTransformer: the from-scratch ViT recipe, attention maps, progressive resizing
              on its patches), "transformer" (other token models: eva, beit, swin, ...) or "CNN"
    tokens    it takes an image and patch size (a patch embedding): a transformer of either kind
    """
    kind: str
    tokens: bool

    @property
    def vit(self) -> bool:
        return self.kind == "ViT"


VIT = Architecture("ViT", True)


def architecture(name: str) -> Architecture:
    """The Architecture of a timm name (tag allowed) or local-dir: folder; an hf-hub: id is taken for a ViT (its
    architecture is only known once its config.json is downloaded)."""
    if name.startswith("local-dir:"):
        try:
            name = json.loads((Path(name[len("local-dir:"):]) / "config.json").read_text()).get("architecture", "")
        except (OSError, ValueError, AttributeError):
            return VIT
    if name.startswith("hf-hub:") or not name:
        return VIT
    return _architecture(name.split(".")[0])


@functools.lru_cache(maxsize=64)
def _architecture(arch: str) -> Architecture:
    import timm
    import torch
    from timm.models import VisionTransformer
    if not timm.is_model(arch):
        return VIT  # (creating it says what is wrong)
    with torch.device("meta"):
        model = timm.create_model(arch, num_classes=2)
    if isinstance(model, VisionTransformer):
        return VIT
    tokens = hasattr(model, "patch_embed")
    return Architecture("transformer" if tokens else "CNN", tokens)


def hub_failure(error: BaseException, what: str) -> str:
    """Why a download of `what` from the Hugging Face Hub failed, in words: offline mode, no such (or a
    private) repo, a gated repo, a missing file, the Hub's own answer, or the network. The cause is looked
    for through the chain huggingface_hub wraps it in; an error that is none of these is named as it is."""
    from huggingface_hub import errors
    chain, e = [], error
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    status = next((getattr(getattr(c, "response", None), "status_code", None) for c in chain
                   if getattr(getattr(c, "response", None), "status_code", None)), None)
    if any(isinstance(c, errors.OfflineModeIsEnabled) for c in chain) or (
            offline() and isinstance(error, errors.LocalEntryNotFoundError)):
        return (f"{what} is not in the local cache and downloads are switched off (HF_HUB_OFFLINE is set). Unset it, "
                "or copy a Hugging Face cache (HF_HOME) that holds it.")
    if any(isinstance(c, errors.GatedRepoError) for c in chain):
        return f"{what} is gated: accept its terms on its Hub page, and use a token of that account."
    if any(isinstance(c, errors.RepositoryNotFoundError) for c in chain):
        return f"There is no model {what} on the Hub, or it is private (a private one needs a token of its owner)."
    if any(is_network_error(c) for c in chain):
        return (f"Cannot reach the Hugging Face Hub to download {what} (a network problem). Check the connection, "
                "or copy a Hugging Face cache (HF_HOME) that holds it.")
    if any(isinstance(c, (errors.EntryNotFoundError, errors.RevisionNotFoundError))
           and not isinstance(c, errors.LocalEntryNotFoundError) for c in chain):
        return f"{what} exists but lacks a file the app needs (config.json and model.safetensors)."
    if status:
        return f"The Hugging Face Hub answered {status} for {what}: {str(chain[-1]).splitlines()[0][:200]}"
    return f"Could not download {what}: {type(chain[-1]).__name__}: {str(chain[-1]).splitlines()[0][:200]}"


def hub_call_failure(error: BaseException) -> int | str | None:
    """What went wrong in a call to the Hub, for the caller to say in its own words: the HTTP status it answered (an
    int), "offline" (HF_HUB_OFFLINE is set), "network" (it could not be reached), or None (not a Hub failure)."""
    from huggingface_hub.errors import HfHubHTTPError
    if isinstance(error, HfHubHTTPError):
        return getattr(getattr(error, "response", None), "status_code", None) or 0
    if "offline mode is enabled" in str(error):
        return "offline"
    return "network" if is_network_error(error) else None


def is_network_error(error: BaseException) -> bool:
    """Connection refused, DNS, timeouts, proxies: from the socket or huggingface_hub's HTTP client (httpx or
    httpx2). Not any OSError: a full disk is not the network."""
    import socket
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"TransportError", "NetworkError", "TimeoutException"}) or isinstance(
        error, (ConnectionError, TimeoutError, socket.gaierror))


def check_hub_id(repo_id: str) -> str:
    """`repo_id` (user/name) if the Hub would accept it, else ModelError: the one check of a typed Hub id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ModelError(f"{repo_id[:100]!r} is not a Hub model id; write it as hf-hub:user/name.") from None
    return repo_id


def _weights_message(spec: ModelSpec, error: Exception) -> str:
    where = spec.weights or spec.name
    reason = hub_failure(error, where)
    return (f"Could not load pretrained weights for {where}. {reason} Either train from scratch (tick From scratch "
            "in the app, or --no-pretrained on the command line; it needs more data and epochs), or supply the "
            "weights: download the model once where there is internet into the Hugging Face cache (HF_HOME) and "
            "copy the cache here, or on the command line give a weights file (--weights PATH).")


def built(model: nn.Module, weights: str | None) -> dict:
    """What a model is, as built: family, width, depth, heads, patch, image size, parameters, and what its
    weights are (`weights`, weights_words: "from scratch", "pretrained <tag>", "from the run <id>"). A run records it in
    config.json; every page and the card name the model by it."""
    blocks = getattr(model, "blocks", None)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    attn = getattr(blocks[0], "attn", None) if blocks is not None and len(blocks) else None
    arch = str(model.pretrained_cfg.get("architecture") or type(model).__name__) \
        if hasattr(model, "pretrained_cfg") else type(model).__name__
    if size is None:  # a CNN: the input size of its preprocessing
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (None,))[-1]
    return {"architecture": arch, "family": _family(arch), "kind": _kind_of(model),
            "width": getattr(model, "embed_dim", None),
            "depth": len(blocks) if blocks is not None else None,
            "heads": getattr(attn, "num_heads", None),
            "patch": patch[0] if isinstance(patch, (tuple, list)) else patch,
            "img_size": size[0] if isinstance(size, (tuple, list)) else size,
            "class_token": getattr(model, "cls_token", None) is not None,
            "params": count_parameters(model), "weights": weights}


def built_text(b: dict | None, weights: bool = True) -> str:
    """'ViT 96 wide, 6 blocks, patch 4, 32 px, 0.68M parameters, from scratch'."""
    if not b:
        return ""
    shape = [f"{b['width']} wide" if b.get("width") else None,
             f"{b['depth']} block{'s' * (b['depth'] != 1)}" if b.get("depth") else None,
             f"patch {b['patch']}" if b.get("patch") else None, f"{b['img_size']} px" if b.get("img_size") else None,
             f"{b['params'] / 1e6:.2f}M parameters" if b.get("params") else None]
    words = ", ".join(p for p in shape if p)
    text = f"{b.get('family') or b.get('architecture')} {words}".strip()
    return f"{text}, {b['weights']}" if weights and b.get("weights") else text


def weights_words(model: nn.Module, pretrained: bool, weights: str | None) -> str:
    """What a model's weights are, in a few words: the pretrained tag only when those weights were loaded."""
    if weights:
        path = Path(weights)
        return f"from the run {path.name}" if path.is_dir() else f"from {path.name}"
    if pretrained:
        tag = getattr(model, "pretrained_cfg", {}).get("tag")
        return f"pretrained {tag}" if tag else "pretrained"
    return "from scratch"


def planned(spec: ModelSpec, num_classes: int) -> dict:
    """built() of the model a spec would create, on the meta device: nothing downloaded or allocated. The last few
    are kept (the Train tab's plan and its size check ask for the same one at every change of the form)."""
    key = None if spec.name.startswith("local-dir:") else json.dumps(
        [spec.name, spec.pretrained, spec.weights, spec.img_size, spec.patch_size, spec.model_args, num_classes],
        sort_keys=True, default=str)
    with _PLANNED_LOCK:
        if key in _PLANNED:
            _PLANNED.move_to_end(key)
            return dict(_PLANNED[key])
    made = _planned(spec, num_classes)
    if key is not None:
        with _PLANNED_LOCK:
            _PLANNED[key] = made
            while len(_PLANNED) > 32:
                _PLANNED.popitem(last=False)
    return dict(made)


_PLANNED: OrderedDict[str, dict] = OrderedDict()
_PLANNED_LOCK = threading.Lock()


def _planned(spec: ModelSpec, num_classes: int) -> dict:
    import timm
    import torch
    name, kwargs = _resolve(spec)
    kwargs.update(num_classes=num_classes, pretrained=False)
    if name.startswith("local-dir:"):  # a run's architecture, from its config.json
        config = json.loads((Path(name[len("local-dir:"):]) / "config.json").read_text())
        name = config.get("architecture", name)
        kwargs = {**(config.get("model_args") or {}), **{k: v for k, v in kwargs.items() if k != "img_size"}}
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    return built(model, weights_words(model, spec.pretrained, spec.weights))


def forward_flops(spec: ModelSpec, num_classes: int) -> int:
    """The floating-point operations of one image through the model a spec would create, at its input size: counted
    by torch on the meta device (nothing allocated). What a job's time estimate starts from."""
    return _forward_flops(json.dumps([spec.name, spec.img_size, spec.patch_size, spec.model_args, num_classes],
                                     sort_keys=True, default=str))


@functools.lru_cache(maxsize=32)
def _forward_flops(key: str) -> int:
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    name, img_size, patch_size, model_args, num_classes = json.loads(key)
    name, kwargs = _resolve(ModelSpec(name, pretrained=False, img_size=img_size, patch_size=patch_size,
                                      model_args=model_args))
    kwargs.update(num_classes=num_classes, pretrained=False)
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
        size = data_config(model)["input_size"]
        x = torch.empty(1, *size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def parameters_planned(spec: ModelSpec, num_classes: int) -> int:
    """How many parameters the model of a spec has, before anything is downloaded or allocated: the architecture
    built on the meta device (an hf-hub model's config.json is all that is fetched) and, for an hf-hub model, its
    safetensors header; the larger. ModelError when neither can be read."""
    counts = []
    if spec.name.startswith("hf-hub:") and spec.pretrained and not spec.weights and not weights_cached(spec.name):
        counts.append(hub_parameters(spec.name[len("hf-hub:"):]))  # (weights in the cache: their architecture says)
    try:
        counts.append(planned(spec, num_classes)["params"])
    except ModelError:
        raise
    except Exception as e:  # timm's errors, or the download of an hf-hub config.json
        raise ModelError(f"The size of {spec.name[:100]} cannot be read: {hub_failure(e, spec.name[:100])}") from None
    return max(counts)


def hub_parameters(repo_id: str) -> int:
    """The parameters stored in an hf-hub repo's safetensors weights, read from the file's header (a range
    request of a few KB): no weights are downloaded. ModelError when the header cannot be read."""
    from huggingface_hub import HfApi
    check_hub_id(repo_id)
    try:
        meta = HfApi().get_safetensors_metadata(repo_id)
    except Exception as e:
        raise ModelError(f"The size of hf-hub:{repo_id} cannot be read before downloading it: "
                         f"{hub_failure(e, 'hf-hub:' + repo_id)}") from None
    return int(sum(meta.parameter_count.values()))


def _family(arch: str) -> str:
    prefix = arch.split("_")[0].lower()
    return {"vit": "ViT", "deit": "DeiT", "deit3": "DeiT-III", "eva02": "EVA-02", "beit": "BEiT"}.get(prefix, arch)


def _kind_of(model: nn.Module) -> str:
    """Architecture.kind of a built model."""
    from timm.models import VisionTransformer
    return "ViT" if isinstance(model, VisionTransformer) else "transformer" if hasattr(model, "patch_embed") else "CNN"


def weights_cached(name: str) -> bool:
    """Whether the pretrained weights of a timm name (or hf-hub: id) are in the local Hugging Face cache, so that
    they load without the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
        if name.startswith("hf-hub:"):
            repo = name[len("hf-hub:"):]
        else:
            import timm
            repo = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
        return bool(repo) and any(isinstance(try_to_load_from_cache(repo, f), str)
                                  for f in ("model.safetensors", "open_clip_model.safetensors"))
    except Exception:  # (an unknown name: creating it says why)
        return False
