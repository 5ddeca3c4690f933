"""The feature store: the teacher's features, computed once and read by index.

Layout of a store folder::

    manifest.json            teacher identity, preprocessing, normalisation, dtype, width,
                             dataset fingerprint and counts per split (a store of imported
                             features, :mod:`dsmd.store.importer`, has teacher kind
                             ``imported`` and may lack the test split)
    train.safetensors        image (N_i, D), text (N_t, D), caption_image (N_t,) int64,
                             image_views (N_i, V, D) when store_views = V > 0
    val.safetensors
    test.safetensors

Images are stored once per image, captions once per caption; ``caption_image[j]`` is the row
of caption ``j``'s image. A store is written into ``NAME.partial/`` and renamed into place
when complete, so an interrupted extraction never leaves a store that looks finished.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dsmd.errors import DsmdError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class SplitFeatures:
    """Teacher features of one split.

    Attributes:
        image: ``(N_i, D)`` float32.
        text: ``(N_t, D)`` float32.
        caption_image: ``(N_t,)`` int64, row in ``image`` of each caption's image.
        image_views: ``(N_i, V, D)`` float32 features of ``V`` fixed augmented views of each
            image (:func:`dsmd.data.transforms.view_of`), or None.
    """

    image: torch.Tensor
    text: torch.Tensor
    caption_image: torch.Tensor
    image_views: torch.Tensor | None = None


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON via a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def write_split(folder: str | Path, split: str, features: SplitFeatures, dtype: str = "float32") -> Path:
    """Write one split's tensors atomically; returns the file path."""
    if dtype not in ("float32", "float16"):
        raise DsmdError(f"feature store dtype must be float32 or float16, got {dtype!r}")
    tdtype = torch.float16 if dtype == "float16" else torch.float32
    path = Path(folder) / f"{split}.safetensors"
    tmp = path.with_name(path.name + ".tmp")
    tensors = {
        "image": features.image.to(tdtype).contiguous(),
        "text": features.text.to(tdtype).contiguous(),
        "caption_image": features.caption_image.to(torch.long).contiguous(),
    }
    if features.image_views is not None:
        tensors["image_views"] = features.image_views.to(tdtype).contiguous()
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    return path


def describe_mismatch(found: dict, expected: dict, keys: tuple[str, ...]) -> list[str]:
    """Human-readable differences between two manifests on ``keys``."""
    out = []
    for key in keys:
        if key in expected and found.get(key) != expected[key]:
            out.append(f"{key}: store has {found.get(key)!r}, expected {expected[key]!r}")
    return out


class FeatureStore:
    """A finished feature store folder (see the module docstring)."""

    def __init__(self, path: str | Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self._cache: dict[str, SplitFeatures] = {}

    @classmethod
    def open(cls, path: str | Path) -> FeatureStore:
        """Open a store; a missing or unfinished one is refused with the command that builds it."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            hint = " An extraction was interrupted: run `dsmd extract` again to finish it." if Path(
                str(path) + ".partial").exists() else ""
            raise DsmdError(f"no feature store at {path}.{hint} Build it with `dsmd extract --config CONFIG store={path}` "
                            "(or, for features computed elsewhere, `dsmd import-features`).")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise DsmdError(f"{manifest_path} is corrupt ({exc}). Delete {path} and run `dsmd extract` again.") from exc
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DsmdError(f"{path} has store format {manifest.get('format_version')}, this dsmd reads {FORMAT_VERSION}. Extract again.")
        return cls(path, manifest)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def teacher(self) -> dict:
        return self.manifest["teacher"]

    def split(self, name: str) -> SplitFeatures:
        """Load one split as float32 tensors (cached)."""
        if name not in self._cache:
            if name not in self.manifest["splits"]:
                raise DsmdError(f"feature store {self.path} has no split '{name}' (it has {', '.join(self.manifest['splits'])}).")
            file = self.path / f"{name}.safetensors"
            try:
                t = load_file(str(file))
            except (FileNotFoundError, SafetensorError, OSError) as exc:
                raise DsmdError(f"cannot read {file} ({exc}). Delete {self.path} and run `dsmd extract` again.") from exc
            views = t["image_views"].float() if "image_views" in t else None
            feats = SplitFeatures(t["image"].float(), t["text"].float(), t["caption_image"].long(), views)
            info = self.manifest["splits"][name]
            if feats.image.shape != (info["num_images"], self.dim) or feats.text.shape != (info["num_captions"], self.dim):
                raise DsmdError(f"{file} does not match its manifest. Delete {self.path} and run `dsmd extract` again.")
            self._cache[name] = feats
        return self._cache[name]

    def check_dataset(self, split: str, fingerprint: str) -> None:
        """Refuse a store built from other data than the split at hand."""
        info = self.manifest["splits"].get(split)
        if info is None:
            raise DsmdError(f"feature store {self.path} has no split '{split}'. Run `dsmd extract` for this dataset.")
        if info["fingerprint"] != fingerprint:
            raise DsmdError(
                f"feature store {self.path} was built for another dataset: the '{split}' split's "
                f"fingerprint differs (store {info['fingerprint'][:12]}, data {fingerprint[:12]}). "
                "Point `store=` at the store of this dataset, or run `dsmd extract` into a new folder."
            )

    def check_teacher(self, kind: str, name: str | None) -> None:
        """Refuse a store built by another teacher than the config names."""
        t = self.teacher
        if t.get("kind") != kind or (name is not None and t.get("source") != name):
            build = "dsmd import-features" if kind == "imported" else "dsmd extract"
            raise DsmdError(
                f"feature store {self.path} was built by teacher {t.get('kind')}:{t.get('source') or t.get('name')}, "
                f"but the config names {kind}:{name}. Use the matching store, or run `{build}` into a new folder."
            )
