"""``data.kind=webdataset``: tar shards of samples, as written by ``webdataset.TarWriter``.

``data.manifest`` is a shard pattern with brace expansion (``shards/train-{000000..000009}.tar``;
several patterns may be joined with ``::`` as webdataset allows), a glob (``shards/*.tar``), a
folder (its ``.tar`` files, recursively) or one ``.tar`` file. Shards must be uncompressed:
images are later read from them by random access.

A sample is the run of consecutive members sharing a key (the member name up to the first
``.`` of its base name, webdataset's rule; names starting with ``__`` are skipped). It holds:

- an image: the first of ``jpg``, ``jpeg``, ``png``, ``webp`` (any case) it has; its reference
  is ``SHARD::MEMBER`` (:mod:`dsmd.data.images`);
- captions: ``.txt`` holds one caption per line (blank lines ignored); without a ``.txt``,
  ``.json`` gives ``{"caption": str}`` or ``{"captions": [str, ...]}``;
- optionally a split: ``"split"`` in the ``.json`` (train / val / validation / test / restval).

``.txt`` and ``.json`` members are UTF-8 (a leading byte-order mark is dropped); a ``.json`` is
a JSON object whose ``caption`` / ``captions`` / ``split``, when present and not null, have the
types above. Anything else is refused with an error naming the shard and the member.

Samples without an image or a caption are skipped (e.g. failed downloads in img2dataset
shards). Splits, first that applies: each sample's ``split``; the split word in the shard's
file name (``train-000001.tar``, ``val_0.tar``); else the seeded split. Listing reads tar
headers and the small text members only, never decodes an image, and caches each shard's
member index for the random-access reads that follow.
"""

from __future__ import annotations

import glob
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from braceexpand import braceexpand
from webdataset.tariterators import base_plus_ext

from dsmd.data.formats._common import SPLIT_ALIASES, Row, decode_utf8, json_kind, split_from_name
from dsmd.data.images import remember_tar_index, tar_ref
from dsmd.errors import DsmdError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_META = re.compile(r"__[^/]*__($|/)")


def expand_shards(pattern: str) -> list[str]:
    """The absolute paths of the shards a pattern names, in pattern (or sorted) order.

    Raises:
        DsmdError: a shard the pattern names explicitly is missing (the message names the
            first and the count), or nothing matches.
    """
    path = Path(pattern).expanduser()
    if path.is_dir():
        shards = sorted(path.rglob("*.tar"))
        if not shards:
            raise DsmdError(f"no .tar shards in {path}. Set data.manifest to a shard pattern or folder.")
    elif "{" in pattern:
        shards = [Path(p).expanduser() for part in pattern.split("::") for p in braceexpand(part)]
        missing = [p for p in shards if not p.is_file()]
        if missing:
            raise DsmdError(
                f"shard not found: {missing[0]} ({len(missing)} of the {len(shards)} shards of "
                f"{pattern} are missing). Fix data.manifest or restore the shards."
            )
    elif any(c in pattern for c in "*?["):
        shards = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        if not shards:
            raise DsmdError(f"no shard matches {pattern}. Set data.manifest to a shard pattern or folder.")
    elif path.is_file():
        shards = [path]
    else:
        raise DsmdError(f"shard not found: {path}. Set data.manifest to a shard pattern, glob or folder.")
    return [str(p.absolute()) for p in shards]


@dataclass
class Sample:
    """One sample of a shard: its key, image member (and bytes, when read), captions, split, and
    the bytes of the other members asked for (``members``: extension -> bytes)."""

    key: str
    image: str | None = None
    image_bytes: bytes | None = None
    captions: list[str] = field(default_factory=list)
    split: str = ""
    members: dict[str, bytes] = field(default_factory=dict)


def _meta(member: tuple[str, bytes] | None) -> dict:
    """The ``.json`` member ``(name, bytes)`` as an object; ``{}`` without one."""
    if member is None:
        return {}
    name, data = member
    try:
        meta = json.loads(decode_utf8(data, name))
    except json.JSONDecodeError as exc:
        raise DsmdError(f"{name} is not valid JSON ({exc}).") from exc
    if not isinstance(meta, dict):
        raise DsmdError(f'{name} must be a JSON object ({{"caption": ...}}), not {json_kind(meta)}.')
    return meta


def _json_captions(meta: dict, name: str) -> list[str]:
    """``captions`` (or else ``caption``) of a ``.json`` member: a string or a list of strings."""
    field = "captions" if meta.get("captions") is not None else "caption"
    value = meta.get(field)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise DsmdError(f"{name}: '{field}' must be a string or a list of strings, not {json_kind(value)}.")
    for k, caption in enumerate(value):
        if not isinstance(caption, str):
            raise DsmdError(f"{name}: {field}[{k}] must be a string (a caption), not {json_kind(caption)}.")
    return value


def _captions_of(text: dict[str, tuple[str, bytes]]) -> tuple[list[str], str]:
    """Captions and split of a sample from its ``txt`` / ``json`` members (``ext -> (name, bytes)``).

    Raises:
        DsmdError: a member that is not UTF-8, a ``.json`` that is not a JSON object, or a
            ``caption`` / ``captions`` / ``split`` of the wrong type; the message names the member.
    """
    meta = _meta(text.get("json"))
    split = meta.get("split")
    if split is not None and not isinstance(split, str):
        raise DsmdError(
            f"{text['json'][0]}: 'split' must be a string (one of {', '.join(SPLIT_ALIASES)}), not {json_kind(split)}."
        )
    captions = decode_utf8(text["txt"][1], text["txt"][0]).splitlines() if "txt" in text else []
    if not any(c.strip() for c in captions) and "json" in text:
        captions = _json_captions(meta, text["json"][0])
    return [c.strip() for c in captions if c.strip()], split or ""


def iter_samples(
    shard: str, read_images: bool = False, wanted=None, read_members: tuple[str, ...] = ()
) -> Iterator[Sample]:
    """The samples of one shard, in order; text members are read, images only if ``read_images``.

    Args:
        shard: path of an uncompressed tar file.
        read_images: also read the image member's bytes into ``Sample.image_bytes``.
        wanted: optional predicate on the image member's name; images it rejects are not read.
        read_members: extensions (lower case, e.g. ``teacher_image.npy``) whose members are
            read into ``Sample.members`` for every sample with an image (those it has).

    Raises:
        DsmdError: the shard is not a readable tar file.
    """
    index: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(shard, "r:") as tf:
            key, members = None, {}

            def flush():
                image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
                text = {
                    e: (tar_ref(shard, members[e].name), tf.extractfile(members[e]).read())
                    for e in ("txt", "json")
                    if e in members
                }
                captions, split = _captions_of(text)
                sample = Sample(key, image.name if image else None, None, captions, split)
                if image is not None:
                    sample.members = {e: tf.extractfile(members[e]).read() for e in read_members if e in members}
                if image is not None and read_images and (wanted is None or wanted(image.name)):
                    sample.image_bytes = tf.extractfile(image).read()
                return sample

            for member in tf:
                if not member.isfile():
                    continue
                index[member.name] = (member.offset_data, member.size)
                base, ext = base_plus_ext(member.name)
                if base is None or _META.match(member.name):
                    continue
                if base != key:
                    if key is not None:
                        yield flush()
                    key, members = base, {}
                members.setdefault(ext.lower(), member)
            if key is not None:
                yield flush()
    except tarfile.TarError as exc:
        raise DsmdError(f"cannot read shard {shard}: {exc}. Shards must be uncompressed .tar files.") from exc
    remember_tar_index(shard, index)


def list_webdataset(pattern: str) -> list[Row]:
    """(``SHARD::MEMBER`` image reference, caption, split) for every caption, in shard order."""
    rows: list[Row] = []
    for shard in expand_shards(pattern):
        shard_split = split_from_name(shard)
        for sample in iter_samples(shard):
            if sample.image is None or not sample.captions:
                continue
            ref = tar_ref(shard, sample.image)
            rows.extend((ref, caption, sample.split or shard_split) for caption in sample.captions)
    return rows
