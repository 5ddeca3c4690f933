"""The config of unpaired data: pools of images without captions and of captions without
images (``data.unpaired_images``, ``data.unpaired_texts``), the losses that learn from them
(``u_cd u_fd u_sd u_hnd`` in ``loss.losses``) and how many of their items a step takes
(``train.unpaired_ratio``); docs/method.md "Unpaired data".

The new keys are declared with :data:`~dsmd.config.checks.OMITTED_AT_DEFAULT`: a config that leaves them at their
defaults writes, saves and hashes exactly as before they existed (:func:`dsmd.config.io.config_to_dict`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from dsmd.config.checks import OMITTED_AT_DEFAULT, at_least, check_fields, refuse

UNPAIRED_LOSS_NAMES: tuple[str, ...] = ("u_cd", "u_fd", "u_sd", "u_hnd")


def _check_pool(pool: Any, section: str) -> None:
    if pool.kind == "none" and pool.path is not None:
        raise refuse(f"{section}.path", f"is set but {section}.kind is none; set {section}.kind too.")
    if pool.kind != "none" and not pool.path:
        raise refuse(f"{section}.path", f"{section}.kind={pool.kind} needs a path ({pool.WHAT[pool.kind]}).")


@dataclass
class UnpairedImagesConfig:
    """A pool of images without captions (``data.unpaired_images``).

    Attributes:
        kind: ``none`` (no pool), ``folder`` (every image under ``path``, recursively), ``jsonl`` (one JSON
            object a line, the image's path under ``column``) or ``webdataset`` (the images of the shards
            ``path`` names: brace pattern, glob, folder or one ``.tar``; samples need no caption).
        path: the folder, JSONL file or shard pattern.
        column: ``jsonl``: the field holding the image's path.
        root: ``jsonl``: the base of relative paths (default: the file's folder).
        exclude: ``folder``: folder names skipped at any depth.
        limit: keep the first N images (after repeats are dropped); null keeps them all.
    """

    SECTION: ClassVar[str] = "data.unpaired_images"
    WHAT: ClassVar[dict[str, str]] = {
        "folder": "a folder of images",
        "jsonl": "a JSONL file with an image path a line",
        "webdataset": "a shard pattern, glob or folder",
    }

    kind: Literal["none", "folder", "jsonl", "webdataset"] = "none"
    path: str | None = None
    column: str = "image"
    root: str | None = None
    exclude: list[str] = field(default_factory=list)
    limit: int | None = at_least(1, None)

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)
        _check_pool(self, self.SECTION)


@dataclass
class UnpairedTextsConfig:
    """A pool of captions without images (``data.unpaired_texts``).

    Attributes:
        kind: ``none`` (no pool), ``lines`` (a UTF-8 text file, one caption a line, blank lines skipped),
            ``jsonl`` (one JSON object a line, a caption or a list of captions under ``column``),
            ``webdataset`` (the ``.txt`` / ``.json`` captions of the shards ``path`` names; samples need no
            image) or ``vocabulary`` (``template`` filled with each whole word of the tokenizer ``path``
            names: its alphabetic ASCII tokens of three letters or more, in the vocabulary's order).
        path: the text file, JSONL file, shard pattern or, for ``vocabulary``, the tokenizer: ``minilm``
            (the packaged all-MiniLM-L6-v2) or a folder or hub name.
        column: ``jsonl``: the field holding the caption(s).
        template: ``vocabulary``: the caption of each word, ``{}`` standing for the word.
        limit: keep the first N captions (after repeats are dropped); null keeps them all.
    """

    SECTION: ClassVar[str] = "data.unpaired_texts"
    WHAT: ClassVar[dict[str, str]] = {
        "lines": "a text file, one caption a line",
        "jsonl": "a JSONL file with a caption a line",
        "webdataset": "a shard pattern, glob or folder",
        "vocabulary": "a tokenizer: minilm, or a folder or hub name",
    }

    kind: Literal["none", "lines", "jsonl", "webdataset", "vocabulary"] = "none"
    path: str | None = None
    column: str = "caption"
    template: str = field(default="a photo of a {}.", metadata=OMITTED_AT_DEFAULT)
    limit: int | None = at_least(1, None)

    def __post_init__(self) -> None:
        check_fields(self, self.SECTION)
        _check_pool(self, self.SECTION)
        if "{}" not in self.template:
            raise refuse(
                f"{self.SECTION}.template", f"{self.template!r} has no {{}} for the word; e.g. 'a photo of a {{}}.'"
            )


def pool_field(cls: type) -> Any:
    """A ``data`` field holding a pool config, left out of saved configs while it is ``none``."""
    return field(default_factory=cls, metadata=OMITTED_AT_DEFAULT)


def ratio_field(default: float) -> Any:
    """``train.unpaired_ratio``: a number >= 0, left out of saved configs at its default."""
    return field(default=default, metadata={"ge": 0, **OMITTED_AT_DEFAULT})


def has_pools(data: Any) -> bool:
    """Whether the ``data`` section names a pool of unpaired images or captions."""
    return data.unpaired_images.kind != "none" or data.unpaired_texts.kind != "none"


def uses_unpaired(cfg: Any) -> bool:
    """Whether training learns from the pools: some ``u_*`` loss is enabled (the config then has a pool)."""
    return any(name in UNPAIRED_LOSS_NAMES for name in cfg.loss.losses)


def reads_pools(cfg: Any) -> bool:
    """Whether a run reads its pools: for ``u_*`` losses or for the text warm-up."""
    return uses_unpaired(cfg) or cfg.train.text_warmup_epochs > 0


def unpaired_per_step(cfg: Any) -> int:
    """Unpaired images (and, separately, captions) per optimiser step over all processes:
    ``train.unpaired_ratio x train.batch_size``."""
    return round(cfg.train.unpaired_ratio * cfg.train.batch_size)


def check_unpaired(cfg: Any) -> None:
    """The rules that tie the unpaired keys to the rest of a :class:`~dsmd.config.schema.RunConfig`.

    Raises:
        DsmdError: ``u_*`` losses without a pool; a text warm-up without a caption pool; pools with imported
            features; a ratio that does not give a whole number of items per micro-batch.
    """
    wanted = [name for name in cfg.loss.losses if name in UNPAIRED_LOSS_NAMES]
    if cfg.train.text_warmup_epochs and cfg.data.unpaired_texts.kind == "none":
        raise refuse(
            "train.text_warmup_epochs",
            f"{cfg.train.text_warmup_epochs}: the text warm-up learns the teacher's features of a caption pool, but "
            'data.unpaired_texts is kind none. Give one (docs/method.md "Unpaired data") or set it to 0.',
        )
    if wanted and not has_pools(cfg.data):
        raise refuse(
            "loss.losses",
            f"{', '.join(wanted)} learn from unpaired images or captions, but data.unpaired_images and "
            'data.unpaired_texts are both kind none. Give a pool (docs/method.md "Unpaired data") or remove them.',
        )
    if has_pools(cfg.data) and cfg.teacher.kind == "imported":
        key = "data.unpaired_images" if cfg.data.unpaired_images.kind != "none" else "data.unpaired_texts"
        raise refuse(key, "imported features have no teacher to run over a pool; extract the store with a teacher.")
    if not wanted:
        return
    items = cfg.train.unpaired_ratio * cfg.train.batch_size
    accum = cfg.train.grad_accum_steps
    if not math.isclose(items, round(items), abs_tol=1e-9) or round(items) < 1 or round(items) % accum:
        raise refuse(
            "train.unpaired_ratio",
            f"{cfg.train.unpaired_ratio} x train.batch_size={cfg.train.batch_size} = {items:g} unpaired items a step; "
            f"it must be a whole number of at least 1 that divides into train.grad_accum_steps={accum} micro-batches.",
        )
