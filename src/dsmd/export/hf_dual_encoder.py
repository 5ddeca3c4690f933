"""The student as a transformers ``VisionTextDualEncoderModel``, exactly.

That class computes ``visual_projection(vision_model(x).pooler_output)`` and
``text_projection(text_model(c).pooler_output)`` with bias-free projections, while the student
computes ``W_v · CLS_v + b_v`` and ``W_t · CLS_t + b_t`` (CLS: token 0 of the last hidden
states). The exact rewrite used here:

- **Biases** move into the towers' poolers: with ``W c = b`` (``c`` the least-norm solution,
  which exists when ``W`` (``D x H``) has rank ``D``, i.e. when ``D <= H``), ``W (h + c) = W h + b``.
- **ViT / DeiT pooler** (``dense`` + a configurable activation): ``dense = (identity, c_v)``,
  ``pooler_act = "linear"``, so ``pooler_output = CLS_v + c_v``.
- **BERT-family pooler** (``dense`` + a fixed ``tanh``): ``dense = (2^-24 · identity, 2^-24 · c_t)``
  and ``text_projection = 2^24 · W_t``. Scaling by a power of two is exact in floating point,
  and at magnitudes below ``2^-12`` ``tanh(z)`` equals ``z`` to float32 rounding, so the result is
  ``W_t (CLS_t + c_t)`` whenever ``|CLS_t + c_t| < 4096`` (hidden states are far smaller).

Students this cannot represent exactly get no transformers copy (the reason is logged): an
EfficientNet vision tower, mean pooling of the text tower (the class pools token 0), factorised
word embeddings (``student.text_embedding_rank``: a BERT has one table), a teacher
width above a tower's width (the bias cannot be folded), an image size other than the ViT's
own (plain transformers would not interpolate its positions). ``dsmd.load_student`` and the
ONNX files work for every student.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from dsmd.models import DualEncoder
from dsmd.models.text import TextTower
from dsmd.models.vision import HFVisionTower

TEXT_SCALE = 2.0**24
_TANH_POOLERS = ("bert", "roberta", "xlm-roberta", "camembert", "albert", "ernie")


def _fold(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor | None:
    """``c`` with ``weight @ c == bias`` (least norm, float64), or None when none exists."""
    w, b = weight.detach().double(), bias.detach().double()
    c = torch.linalg.lstsq(w, b[:, None], driver="gelsd").solution[:, 0]
    residual = float((w @ c - b).abs().max())
    return c.float() if residual <= 1e-6 * max(1.0, float(b.abs().max())) else None


def dual_encoder_problem(student: DualEncoder) -> str | None:
    """Why ``student`` cannot be written as a ``VisionTextDualEncoderModel`` (None: it can)."""
    vision, text = student.vision, student.text
    if not isinstance(vision, HFVisionTower) or not hasattr(vision.model.config, "pooler_act"):
        return f"its vision tower ({type(vision).__name__}) is not a ViT / DeiT"
    if not isinstance(text, TextTower) or text.model.config.model_type not in _TANH_POOLERS:
        return f"its text tower ({text.model.config.model_type}) is not BERT-family"
    if text.embedding_rank is not None:
        return (
            f"its text tower's word embeddings are factorised (rank {text.embedding_rank}); a transformers "
            "BERT holds one full table"
        )
    if text.pooling != "cls":
        return "its text tower mean-pools (the transformers class pools the first token)"
    if tuple(vision._native_size) != (student.image_size, student.image_size):
        return f"it sees {student.image_size} px images, not the ViT's own {vision._native_size[0]} px"
    for name, proj in (("vision", student.vision_proj), ("text", student.text_proj)):
        if proj.out_features > proj.in_features or _fold(proj.weight, proj.bias) is None:
            return (
                f"the teacher's width ({proj.out_features}) exceeds the {name} tower's ({proj.in_features}), so "
                "the projection's bias cannot be folded into the class's bias-free projection"
            )
    return None


def build_dual_encoder(student: DualEncoder):
    """The ``VisionTextDualEncoderModel`` that computes ``student``'s features (see the module docstring)."""
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    vision_config = copy.deepcopy(student.vision.model.config)
    vision_config.pooler_act, vision_config.pooler_output_size = "linear", vision_config.hidden_size
    text_config = copy.deepcopy(student.text.model.config)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision_config, text_config, projection_dim=student.dim
    )
    model = VisionTextDualEncoderModel(config).eval()
    with torch.no_grad():
        for tower, source in ((model.vision_model, student.vision.model), (model.text_model, student.text.model)):
            missing, unexpected = tower.load_state_dict(source.state_dict(), strict=False)
            if unexpected or any(not k.startswith("pooler.") for k in missing):
                raise RuntimeError(f"tower weights do not map: missing {missing}, unexpected {unexpected}")
        hidden_v = vision_config.hidden_size
        model.vision_model.pooler.dense.weight.copy_(torch.eye(hidden_v))
        model.vision_model.pooler.dense.bias.copy_(_fold(student.vision_proj.weight, student.vision_proj.bias))
        model.visual_projection.weight.copy_(student.vision_proj.weight)
        hidden_t = text_config.hidden_size
        model.text_model.pooler.dense.weight.copy_(torch.eye(hidden_t) / TEXT_SCALE)
        model.text_model.pooler.dense.bias.copy_(_fold(student.text_proj.weight, student.text_proj.bias) / TEXT_SCALE)
        model.text_projection.weight.copy_(student.text_proj.weight * TEXT_SCALE)
    return model


def _image_processor(student: DualEncoder):
    # The PIL implementations (the default ones need torchvision, which dsmd does not install)
    try:
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
        from transformers import ViTImageProcessorPil as ViTImageProcessor
    except ImportError:  # transformers before the split
        from transformers import CLIPImageProcessor, ViTImageProcessor

    t = student.image_transform(train=False)
    resample = 3 if t.resample == "bicubic" else 2  # PIL's codes
    common = dict(
        image_mean=list(t.mean),
        image_std=list(t.std),
        resample=resample,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
    )
    if t.crop:
        return CLIPImageProcessor(
            size={"shortest_edge": t.size},
            crop_size={"height": t.size, "width": t.size},
            do_center_crop=True,
            do_convert_rgb=True,
            **common,
        )
    return ViTImageProcessor(size={"height": t.size, "width": t.size}, do_resize=True, **common)


def save_dual_encoder(student: DualEncoder, folder: Path, log) -> bool:
    """Write ``student`` into ``folder`` as a ``VisionTextDualEncoderModel`` with its processor
    (config.json, model.safetensors, preprocessor_config.json, tokenizer); False (and a log line
    saying why) when it cannot be represented exactly."""
    from transformers import VisionTextDualEncoderProcessor

    problem = dual_encoder_problem(student)
    if problem is not None:
        log(f"export: not written as a transformers VisionTextDualEncoderModel: {problem}")
        return False
    build_dual_encoder(student).save_pretrained(str(folder))
    VisionTextDualEncoderProcessor(
        image_processor=_image_processor(student), tokenizer=student.text.tokenizer
    ).save_pretrained(str(folder))
    return True
