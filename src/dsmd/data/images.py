"""Opening images from files and from containers (tar shards, parquet and arrow tables).

An *image reference* (an entry of ``CaptionedImages.image_paths``) is either a plain file
path or ``CONTAINER::MEMBER``:

- ``/shards/train-000001.tar::000123.jpg``: the member ``000123.jpg`` of an uncompressed tar
  file (a webdataset shard). Read by random access: each process builds once, with
  :mod:`tarfile`, the shard's index ``member name -> (offset, size)`` and caches it; the
  bytes are then read with one seek.
- ``/data/part-0.parquet::row=12::col=image`` or
  ``/data/train/data-00000-of-00001.arrow::row=12::col=image``: the cell of column ``image``
  in row 12 (0-based, counted within that file) of a parquet file or of an arrow file written
  by ``datasets``' ``save_to_disk``. The cell is a ``datasets`` ``Image`` value
  (``{"bytes": ..., "path": ...}``), raw bytes, or a path string. Arrow files are memory-mapped
  and cached per process; parquet files are read one row group at a time (a few decoded row
  groups are cached per process), so a worker never holds a whole parquet file in memory.

A string is a reference when the part before its first ``::`` ends in ``.tar``, ``.parquet``
or ``.arrow``; anything else is a file path.

Every image, for every teacher and for the student, is decoded here (:func:`load_image`,
:func:`decode_image` and, for PIL images given directly, :func:`to_rgb` all go through
:func:`~dsmd.data.viewing.as_seen`) and returned as 8-bit RGB, as an image viewer shows it:

- **Upright**: the EXIF orientation tag is applied (a phone photo stored sideways is seen upright).
- **In sRGB**: an embedded ICC profile (Display P3, Adobe RGB, CMYK, grey) is converted to
  sRGB; an sRGB profile, or one that cannot be read, is not applied. CMYK, palette, grey and
  16-bit images are converted to RGB; 16-bit, ``I`` and ``F`` images are scaled to 8 bits.
- **The first frame** of an animated GIF, WebP or APNG.
- **Transparency** (RGBA, LA, PA, RGBa, La, a palette or an RGB / L image with a transparent
  colour) is composited onto **white**, so the models see what a person sees. BEiT-3's own
  code drops the alpha channel instead (``convert("RGB")``), exposing whatever colour the
  transparent pixels store; dsmd deliberately composites onto white for BEiT-3 too.
- **Size limit**: an image with more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (PIL's
  decompression-bomb limit, about 89.5 million, left as PIL sets it) is refused with a
  :class:`~dsmd.errors.DsmdError` naming it, its pixel count and the limit. PIL itself only warns
  between 1x and 2x that limit; dsmd refuses that range too, so that no image is decoded
  whose size PIL considers suspect. To read larger images, downscale them, or raise
  ``PIL.Image.MAX_IMAGE_PIXELS`` in your own code before loading (dsmd never does).

:mod:`dsmd.data.viewing` details each conversion.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tarfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dsmd.data.viewing import as_seen
from dsmd.errors import DsmdError

SEP = "::"
TAR_SUFFIXES = (".tar",)
TABLE_SUFFIXES = (".parquet", ".arrow")
ROW_GROUP_CACHE = 8  # decoded parquet row groups kept per process


@dataclass(frozen=True)
class ImageRef:
    """A parsed reference: ``container`` file, ``member`` text after the first ``::``.

    For tables ``row`` and ``column`` are set (``member`` is ``row=R::col=C``).
    """

    container: str
    member: str
    row: int | None = None
    column: str | None = None

    @property
    def is_tar(self) -> bool:
        return self.container.endswith(TAR_SUFFIXES)


def tar_ref(tar: str | Path, member: str) -> str:
    """The reference of ``member`` in the tar file ``tar``."""
    return f"{tar}{SEP}{member}"


def table_ref(table: str | Path, row: int, column: str) -> str:
    """The reference of the cell ``(row, column)`` of a parquet or arrow file."""
    return f"{table}{SEP}row={row}{SEP}col={column}"


def parse_ref(ref: str | Path) -> ImageRef | None:
    """The parts of a container reference, or None for a plain file path.

    Raises:
        DsmdError: a table reference without ``row=R::col=C``.
    """
    ref = str(ref)
    container, sep, member = ref.partition(SEP)
    if not sep or not container.endswith(TAR_SUFFIXES + TABLE_SUFFIXES):
        return None
    if container.endswith(TAR_SUFFIXES):
        return ImageRef(container, member)
    fields = dict(part.partition("=")[::2] for part in member.split(SEP))
    try:
        return ImageRef(container, member, int(fields["row"]), fields["col"])
    except (KeyError, ValueError):
        raise DsmdError(
            f"bad image reference {ref!r}: a table reference reads 'FILE{SEP}row=R{SEP}col=COLUMN'."
        ) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _too_large(name: str, exc: Exception) -> DsmdError:
    """The error for an image over ``Image.MAX_IMAGE_PIXELS`` (PIL's message gives its pixel count)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "more pixels"
    return DsmdError(
        f"image {name} is too large: {size}, over the limit of {Image.MAX_IMAGE_PIXELS:,} "
        "pixels (PIL.Image.MAX_IMAGE_PIXELS, against decompression bombs). Downscale the image "
        "or remove it from the dataset."
    )


@contextlib.contextmanager
def _decoding(name: str):
    """Turn what decoding the image ``name`` raises into a one-line :class:`DsmdError`.

    PIL's decompression-bomb warning (between 1x and 2x ``Image.MAX_IMAGE_PIXELS``) is
    raised as an error here, like its error above 2x: both become one :class:`DsmdError`.
    (``warnings.catch_warnings`` is process-wide: images are decoded in the main thread or
    in DataLoader worker processes, never by several threads of one process.)
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(name, exc) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DsmdError(f"cannot read image {name}: {_one_line(exc)}. Replace or remove it from the dataset.") from exc


def _open_rgb(source, name: str) -> Image.Image:
    """Decode an image (an open binary file) to RGB (:func:`~dsmd.data.viewing.as_seen`); ``name``
    is used in errors.

    Raises:
        DsmdError: not an image, truncated or corrupt, or too large.
    """
    with _decoding(name), Image.open(source) as img:
        return as_seen(img)


def to_rgb(img: Image.Image, name: str | None = None) -> Image.Image:
    """A PIL image as 8-bit RGB, exactly as :func:`load_image` decodes its file (module docstring).

    ``img`` itself is not changed; its current frame is used.

    Args:
        name: how errors name the image (default: its file name, or "a PIL image").

    Raises:
        DsmdError: its pixel data are truncated or corrupt (a lazily opened file).
    """
    with _decoding(name or getattr(img, "filename", "") or "a PIL image"):
        return as_seen(img)


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, WebP...) to 8-bit RGB; ``name`` is used in errors.

    Upright, in sRGB, transparency composited onto white, high bit depths scaled (module docstring).

    Raises:
        DsmdError: not an image, corrupt, or over ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    return _open_rgb(io.BytesIO(data), name)


def load_image(ref: str | Path) -> Image.Image:
    """Open an image file or container reference as 8-bit RGB.

    Upright (EXIF orientation), colours converted to sRGB from an embedded ICC profile,
    transparency composited onto white (not dropped as BEiT-3's code does), 16-bit, ``I`` and
    ``F`` images scaled to 8 bits, the first frame of an animation (module docstring).

    Raises:
        DsmdError: the file, container or member is missing, unreadable or not an image, or
            has more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``; the message names the
            container and the member.
    """
    parsed = parse_ref(ref)
    if parsed is not None:
        return decode_image(read_member(parsed), f"{parsed.member} of {parsed.container}")
    path = Path(ref)
    if not path.is_file():
        raise DsmdError(f"image not found: {path}. Check the dataset's image root or manifest.")
    try:
        with path.open("rb") as f:
            return _open_rgb(f, str(path))
    except OSError as exc:  # (opening the file; decoding errors are DsmdErrors)
        raise DsmdError(f"cannot read image {path}: {_one_line(exc)}. Check the file's permissions.") from exc


def read_member(ref: ImageRef | str) -> bytes:
    """The encoded bytes a container reference points at.

    Raises:
        DsmdError: the container or the member is missing.
    """
    if isinstance(ref, str):
        parsed = parse_ref(ref)
        if parsed is None:
            raise ValueError(f"{ref!r} is not a container reference")
        ref = parsed
    if not Path(ref.container).is_file():
        raise DsmdError(
            f"image container not found: {ref.container} (for member {ref.member}). "
            "The dataset's files moved or were deleted; list the dataset again."
        )
    if ref.is_tar:
        entry = tar_index(ref.container).get(ref.member)
        if entry is None:
            raise DsmdError(
                f"member {ref.member} not found in {ref.container}. "
                "The shard changed since it was listed; list the dataset again."
            )
        offset, size = entry
        with open(ref.container, "rb") as f:
            f.seek(offset)
            return f.read(size)
    value = _table_cell(ref)
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and path and Path(path).is_file():
            return Path(path).read_bytes()
        value = data
    if isinstance(value, str) and Path(value).is_file():
        return Path(value).read_bytes()
    if not isinstance(value, bytes):
        raise DsmdError(
            f"row {ref.row}, column '{ref.column}' of {ref.container} holds no image bytes "
            f"({type(value).__name__}). Check data.image_column."
        )
    return value


# Per-process caches. The tar indexes are plain data and survive a fork; open parquet files
# are dropped in a forked DataLoader worker so that no file handle is shared between processes.
_tar_indexes: dict[str, tuple[tuple[int, int], dict[str, tuple[int, int]]]] = {}
_arrow_tables: dict[str, tuple[tuple[int, int], object]] = {}
_parquet_files: dict[str, tuple[tuple[int, int], object, list[int]]] = {}
_row_groups: OrderedDict = OrderedDict()
_owner_pid = os.getpid()


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _check_pid() -> None:
    global _owner_pid
    if os.getpid() != _owner_pid:
        _owner_pid = os.getpid()
        _parquet_files.clear()
        _row_groups.clear()


def tar_index(path: str | Path) -> dict[str, tuple[int, int]]:
    """``member name -> (data offset, size)`` of a tar file, built once per process and file version."""
    path = str(path)
    stamp = _stamp(path)
    cached = _tar_indexes.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    index = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for member in tf:
                if member.isfile():
                    index[member.name] = (member.offset_data, member.size)
    except tarfile.TarError as exc:
        raise DsmdError(f"cannot read tar file {path}: {exc}. Shards must be uncompressed .tar files.") from exc
    _tar_indexes[path] = (stamp, index)
    return index


def remember_tar_index(path: str | Path, index: dict[str, tuple[int, int]]) -> None:
    """Cache an index built while listing a shard, so the first read need not rebuild it."""
    _tar_indexes[str(path)] = (_stamp(str(path)), index)


def open_arrow(path: str | Path):
    """A memory-mapped ``pyarrow.Table`` of an arrow IPC file (stream or file format), cached."""
    import pyarrow as pa

    path = str(path)
    stamp = _stamp(path)
    cached = _arrow_tables.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    source = pa.memory_map(path, "r")
    try:
        table = pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source = pa.memory_map(path, "r")
        try:
            table = pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid as exc:
            raise DsmdError(f"{path} is not an arrow file ({exc}).") from exc
    _arrow_tables[path] = (stamp, table)
    return table


def _parquet(path: str):
    import pyarrow.parquet as pq

    _check_pid()
    stamp = _stamp(path)
    cached = _parquet_files.get(path)
    if cached is None or cached[0] != stamp:
        pf = pq.ParquetFile(path, memory_map=True)
        starts = [0]
        for i in range(pf.metadata.num_row_groups):
            starts.append(starts[-1] + pf.metadata.row_group(i).num_rows)
        cached = _parquet_files[path] = (stamp, pf, starts)
    return cached


def _table_cell(ref: ImageRef):
    if ref.container.endswith(".arrow"):
        table = open_arrow(ref.container)
        if ref.column not in table.column_names:
            raise DsmdError(f"{ref.container} has no column '{ref.column}' (member {ref.member}).")
        if not 0 <= ref.row < table.num_rows:
            raise DsmdError(f"row {ref.row} not in {ref.container} ({table.num_rows} rows).")
        return table.column(ref.column)[ref.row].as_py()
    import bisect

    _, pf, starts = _parquet(ref.container)
    if ref.column not in pf.schema_arrow.names:
        raise DsmdError(f"{ref.container} has no column '{ref.column}' (member {ref.member}).")
    if not 0 <= ref.row < starts[-1]:
        raise DsmdError(f"row {ref.row} not in {ref.container} ({starts[-1]} rows).")
    group = bisect.bisect_right(starts, ref.row) - 1
    key = (ref.container, group, ref.column)
    column = _row_groups.get(key)
    if column is None:
        column = pf.read_row_group(group, columns=[ref.column]).column(0)
        _row_groups[key] = column
        while len(_row_groups) > ROW_GROUP_CACHE:
            _row_groups.popitem(last=False)
    else:
        _row_groups.move_to_end(key)
    return column[ref.row - starts[group]].as_py()


def image_exists(ref: str, containers: dict[str, bool] | None = None) -> bool:
    """Whether a file exists, or a reference's container does (members are not opened).

    Args:
        containers: a dict to remember containers already checked in (many images share one).
    """
    parsed = parse_ref(ref)
    if parsed is None:
        return Path(ref).is_file()
    containers = {} if containers is None else containers
    if parsed.container not in containers:
        containers[parsed.container] = Path(parsed.container).is_file()
    return containers[parsed.container]


def identity(ref: str, sizes: dict[str, int] | None = None) -> str:
    """What a dataset fingerprint hashes for one image, without reading image bytes.

    A file: its name and size. A reference: its container's name and size, and the member.

    Args:
        sizes: a dict to remember file sizes already read in (many images share a container).
    """
    parsed = parse_ref(ref)
    target = Path(ref) if parsed is None else Path(parsed.container)
    key = str(target)
    sizes = {} if sizes is None else sizes
    if key not in sizes:
        sizes[key] = target.stat().st_size if target.exists() else -1
    if parsed is None:
        return f"{target.name}\0{sizes[key]}"
    return f"{target.name}{SEP}{parsed.member}\0{sizes[key]}"
