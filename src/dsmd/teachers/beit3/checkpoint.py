"""Reading an official BEiT-3 retrieval checkpoint and inferring its architecture.

The released files (``beit3_{base,large}_patch16_384_{coco,f30k}_retrieval.pth``) hold
``{"model": state_dict}``; ``{"module": state_dict}`` and a bare state dict are accepted too,
as unilm's ``load_model_and_may_interpolate`` does. The size (base or large), the image size
and the vocabulary are read from the tensors' shapes.
"""

from __future__ import annotations

import argparse
import math
import pickle
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from dsmd.errors import DsmdError
from dsmd.teachers.beit3.model import HEAD_DIM, POSITION_OFFSET, BEiT3Config, BEiT3ForRetrieval

EXPECTED = (
    "an official BEiT-3 retrieval checkpoint, beit3_{base,large}_patch16_384_{coco,f30k}"
    "_retrieval.pth (microsoft/unilm, beit3)"
)
RETRIEVAL_HEADS = ("vision_head.weight", "language_head.weight")
# Parameters the features never use; a file without them still loads (with their defaults).
UNUSED_KEYS = ("logit_scale", "beit3.vision_embed.mask_token")
_VISION_POSITIONS = "beit3.encoder.embed_positions.A.weight"


def _torch_load(path: Path) -> object:
    """``torch.load`` restricted to tensors and plain containers (no code runs from the file).

    unilm's training script may save its ``argparse.Namespace`` next to the weights, which is
    allowed. A file that pickles other classes is refused with the fix (re-save the state dict),
    as ``dsmd import-features`` refuses pickles without ``--trust-pickle``.

    Raises:
        DsmdError: the file pickles objects other than tensors and containers.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise
        raise DsmdError(
            f"{path} holds Python objects besides the weights ({_one_line(exc)}), and loading "
            "them would run code from the file. If you trust it, keep only the state dict: "
            f"python -c \"import torch; c = torch.load('{path}', weights_only=False); "
            f"torch.save({{'model': c['model']}}, '{path.with_suffix('.weights.pth')}')\" and "
            "point teacher.name_or_path at the new file."
        ) from exc


def _one_line(exc: Exception, limit: int = 160) -> str:
    """The gist of an exception in one short line (torch's unpickling errors span many)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # skip torch's generic preamble
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a BEiT-3 retrieval checkpoint file, checked.

    Raises:
        DsmdError: the file is missing or unreadable, or is not a BEiT-3 retrieval checkpoint.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DsmdError(f"BEiT-3 checkpoint not found: {path}. Set teacher.name_or_path to {EXPECTED}.")
    try:
        obj = _torch_load(path)
    except DsmdError:
        raise
    except Exception as exc:  # torch.load raises many types on a corrupt or foreign file
        raise DsmdError(
            f"cannot read {path} as a PyTorch checkpoint ({_one_line(exc)}); is it complete? "
            f"teacher.kind=beit3 expects {EXPECTED}."
        ) from exc
    state_dict = obj
    if isinstance(obj, Mapping):
        for key in ("model", "module"):
            if isinstance(obj.get(key), Mapping):
                state_dict = obj[key]
                break
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise DsmdError(f"{path} holds no state dict ({type(obj).__name__}). teacher.kind=beit3 expects {EXPECTED}.")
    state_dict = {str(k): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if "beit3.text_embed.weight" not in state_dict:
        prefixes = sorted({key.split(".")[0] for key in state_dict})[:6]
        raise DsmdError(
            f"{path} is not a BEiT-3 checkpoint: it has no beit3.* weights (its keys start with "
            f"{', '.join(prefixes)}). teacher.kind=beit3 expects {EXPECTED}."
        )
    missing_heads = [key for key in RETRIEVAL_HEADS if key not in state_dict]
    if missing_heads:
        raise DsmdError(
            f"{path} is a BEiT-3 checkpoint without the retrieval heads "
            f"({', '.join(missing_heads)}): a pretraining or other-task checkpoint. "
            f"teacher.kind=beit3 needs {EXPECTED}."
        )
    return state_dict


def config_from_state_dict(state_dict: Mapping[str, torch.Tensor], source: str) -> BEiT3Config:
    """The :class:`BEiT3Config` whose tensors have these shapes.

    Raises:
        DsmdError: a tensor the shapes are read from is missing or has an unexpected shape.
    """
    try:
        vocab_size, embed_dim = state_dict["beit3.text_embed.weight"].shape
        patch_size = state_dict["beit3.vision_embed.proj.weight"].shape[-1]
        vision_rows = state_dict[_VISION_POSITIONS].shape[0]
        text_rows = state_dict["beit3.encoder.embed_positions.B.weight"].shape[0]
        ffn_dim = state_dict["beit3.encoder.layers.0.ffn.A.fc1.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as exc:
        raise DsmdError(
            f"{source} is not a complete BEiT-3 checkpoint (missing or misshapen {exc}). "
            f"teacher.kind=beit3 expects {EXPECTED}."
        ) from exc
    layers = {int(key.split(".")[3]) for key in state_dict if key.startswith("beit3.encoder.layers.")}
    grid = math.isqrt(max(vision_rows - 1 - POSITION_OFFSET, 0))
    if layers != set(range(len(layers))) or grid * grid != vision_rows - 1 - POSITION_OFFSET:
        raise DsmdError(
            f"{source}: unexpected BEiT-3 shapes (layers {sorted(layers)}, {vision_rows} image "
            f"positions). teacher.kind=beit3 expects {EXPECTED}."
        )
    if embed_dim % HEAD_DIM:
        raise DsmdError(
            f"{source}: width {embed_dim} is not a multiple of BEiT-3's head size {HEAD_DIM}. "
            f"teacher.kind=beit3 expects {EXPECTED}."
        )
    return BEiT3Config(
        embed_dim=int(embed_dim),
        num_layers=len(layers),
        num_heads=int(embed_dim) // HEAD_DIM,
        ffn_dim=int(ffn_dim),
        vocab_size=int(vocab_size),
        img_size=grid * int(patch_size),
        patch_size=int(patch_size),
        max_source_positions=int(text_rows),
    )


def resize_image_positions(
    state_dict: dict[str, torch.Tensor], config: BEiT3Config, img_size: int
) -> tuple[dict[str, torch.Tensor], BEiT3Config]:
    """Adapt the image position table to another image size, as unilm does when fine-tuning.

    The first ``1 + 2`` rows (the CLS token and fairseq's two unused offset rows) are kept; the
    patch rows, a ``(grid, grid)`` map, are resized with bicubic interpolation
    (``align_corners=False``), like unilm's ``load_model_and_may_interpolate``.

    Returns:
        A new state dict (other tensors shared) and the config for ``img_size``.

    Raises:
        ValueError: ``img_size`` is not a positive multiple of the patch size.
    """
    if img_size <= 0 or img_size % config.patch_size:
        raise ValueError(f"image size {img_size} is not a positive multiple of the patch size {config.patch_size}")
    new_config = replace(config, img_size=img_size)
    if img_size == config.img_size:
        return state_dict, new_config
    table = state_dict[_VISION_POSITIONS]
    extra = 1 + POSITION_OFFSET
    grid, new_grid, dim = config.grid_size, new_config.grid_size, table.shape[1]
    patches = table[extra:].float().reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(new_grid * new_grid, dim).to(table.dtype)
    resized = dict(state_dict)
    resized[_VISION_POSITIONS] = torch.cat([table[:extra], patches])
    return resized, new_config


def build_model(state_dict: Mapping[str, torch.Tensor], config: BEiT3Config, source: str) -> BEiT3ForRetrieval:
    """A float32 :class:`BEiT3ForRetrieval` holding ``state_dict`` (key for key, shape for shape).

    The model is built on the meta device and takes the tensors over (no second copy of a
    large model, no random initialisation).

    Raises:
        DsmdError: keys are missing or unexpected, or shapes disagree.
    """
    with torch.device("meta"):
        model = BEiT3ForRetrieval(config)
    expected = model.state_dict()
    state_dict = dict(state_dict)
    defaults = {"logit_scale": torch.tensor(math.log(1 / 0.07))}
    for key in UNUSED_KEYS:
        if key not in state_dict:
            state_dict[key] = defaults.get(key, torch.zeros(expected[key].shape))
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else ""))
        if unexpected:
            problems.append(f"unexpected {', '.join(unexpected[:4])}" + (" ..." if len(unexpected) > 4 else ""))
        raise DsmdError(
            f"{source} does not match the BEiT-3 retrieval architecture ({'; '.join(problems)}). "
            f"teacher.kind=beit3 expects {EXPECTED}."
        )
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        raise DsmdError(
            f"{source}: its tensors do not fit a BEiT-3 {config} ({exc}). teacher.kind=beit3 expects {EXPECTED}."
        ) from exc
    return model.float()
