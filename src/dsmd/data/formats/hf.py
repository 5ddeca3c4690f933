"""``data.kind=hf``: Hugging Face ``datasets`` data, read offline with pyarrow.

``data.manifest`` is one of:

- a folder written by ``DatasetDict.save_to_disk`` (``dataset_dict.json`` and one folder of
  arrow files per split) or by ``Dataset.save_to_disk`` (``state.json`` and arrow files);
- a parquet file, a folder of parquet files (searched recursively) or a glob
  (``data/*.parquet``), as on the hub.

Columns (each a ``datasets`` feature):

- ``data.image_column`` (default ``image``): an ``Image`` feature (``{"bytes", "path"}``),
  a path string, or raw encoded bytes. Embedded bytes become a reference
  ``FILE::row=R::col=COLUMN`` (:mod:`dsmd.data.images`); a path without bytes is a file,
  resolved against ``data.root`` when set, else the data file's folder.
- ``data.caption_column`` (default ``caption``): a string, or a list of strings (the hub's
  Flickr30k has 5 per row). With a list, a row is one image. With a string, a row is one
  caption, and rows whose image has the same ``path`` are the same image.

Splits, first that applies: a ``split`` text column (train / val / validation / test / restval);
the splits of a ``DatasetDict`` with more than one (``validation`` -> val); the split word in
a parquet file's name (``train-00000-of-00002.parquet``); else the seeded split
(``data.split_seed``, ``data.val_fraction``, ``data.test_fraction``) as for manifests.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

from dsmd.data.formats._common import SPLIT_ALIASES, Row, read_utf8, resolve, split_from_name
from dsmd.data.images import open_arrow, table_ref
from dsmd.errors import DsmdError

SPLIT_COLUMN = "split"


def _saved_json(path: Path, key: str) -> list:
    """The names listed under ``key`` in a JSON file ``save_to_disk`` wrote: the split names of
    ``dataset_dict.json`` (``splits``), the arrow file names of ``state.json`` (``_data_files``)."""
    try:
        value = json.loads(read_utf8(path))[key]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        why = f"no '{key}'" if isinstance(exc, KeyError | TypeError) else f"not JSON: {exc}"
        raise DsmdError(
            f"{path} is not as save_to_disk writes it ({why}). Save the dataset again with save_to_disk."
        ) from exc
    if key == "_data_files" and isinstance(value, list):  # [{"filename": "data-00000-of-00001.arrow"}, ...]
        value = [v.get("filename") if isinstance(v, dict) else None for v in value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DsmdError(f"{path}: '{key}' is not as save_to_disk writes it. Save the dataset again with save_to_disk.")
    return value


def _arrow_files(folder: Path) -> list[Path]:
    state = folder / "state.json"
    if state.is_file():
        files = [folder / name for name in _saved_json(state, "_data_files")]
    else:
        files = sorted(folder.glob("*.arrow"))
    if not files:
        raise DsmdError(f"no arrow files in {folder}. Is it a folder written by save_to_disk?")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DsmdError(
            f"arrow file not found: {missing[0]} (listed in {state}). Save the dataset again with save_to_disk."
        )
    return files


def data_files(manifest: str) -> list[tuple[Path, str]]:
    """The data files of a dataset and the split each one's source names ("" if none).

    Raises:
        DsmdError: nothing found at ``manifest``, a ``DatasetDict`` split we do not know, or a
            ``dataset_dict.json`` / ``state.json`` that is not as ``save_to_disk`` writes it.
    """
    path = Path(manifest).expanduser()
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        names = _saved_json(path / "dataset_dict.json", "splits")
        unknown = [n for n in names if n not in SPLIT_ALIASES]
        if unknown:
            raise DsmdError(
                f"{path}: split '{unknown[0]}' is not one of {', '.join(SPLIT_ALIASES)}. "
                "Rename it (DatasetDict keys) or save only the splits to use."
            )
        named = len(names) > 1
        return [(f, SPLIT_ALIASES[n] if named else "") for n in names for f in _arrow_files(path / n)]
    if path.is_dir() and (path / "state.json").is_file():
        return [(f, "") for f in _arrow_files(path)]
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    if not files:
        raise DsmdError(
            f"Hugging Face dataset not found: {manifest}. Set data.manifest to a save_to_disk "
            "folder, a parquet file, a folder of parquet files or a glob."
        )
    return [(f, split_from_name(f)) for f in files]


def _columns(path: Path, image_column: str, caption_column: str) -> tuple[list, list, list, list[bool]]:
    """(captions, splits or Nones, image paths or Nones, embedded flags) of every row of one file.

    Image bytes are never read: arrow files are memory-mapped (validity bitmaps only), and
    parquet files answer from their statistics (:func:`_parquet_embedded`).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    arrow = path.suffix == ".arrow"
    table = open_arrow(path) if arrow else None
    pf = None if arrow else pq.ParquetFile(path)
    schema = table.schema if arrow else pf.schema_arrow
    for column, key in ((image_column, "image_column"), (caption_column, "caption_column")):
        if column not in schema.names:
            raise DsmdError(
                f"{path} has no column '{column}'; its columns are: {', '.join(schema.names)}. Set data.{key}."
            )

    def read(columns: list[str]):
        return table.select(columns) if arrow else pf.read(columns=columns)

    has_split = SPLIT_COLUMN in schema.names
    if has_split and not _is_text(schema.field(SPLIT_COLUMN).type):
        raise DsmdError(
            f"{path}: column '{SPLIT_COLUMN}' has type {schema.field(SPLIT_COLUMN).type}; it must hold "
            f"text ({', '.join(SPLIT_ALIASES)}). Rename or drop the column."
        )
    small = read([caption_column] + ([SPLIT_COLUMN] if has_split else []))
    captions = small.column(caption_column).to_pylist()
    n = len(captions)
    splits = small.column(SPLIT_COLUMN).to_pylist() if has_split else [None] * n
    kind = schema.field(image_column).type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:  # a datasets Image feature
        has_path = kind.get_field_index("path") >= 0
        if arrow:
            values = table.column(image_column)
            paths = pc.struct_field(values, "path").to_pylist() if has_path else [None] * n
            valid = pc.and_(pc.is_valid(values), pc.is_valid(pc.struct_field(values, "bytes")))
            embedded = valid.to_pylist()
        else:
            # (a leaf of a struct is read alone: the bytes stay on disk)
            paths = (
                pc.struct_field(pf.read(columns=[f"{image_column}.path"]).column(0), "path").to_pylist()
                if has_path
                else [None] * n
            )
            embedded = _parquet_embedded(pf, f"{image_column}.bytes")
    elif _is_text(kind):
        paths, embedded = read([image_column]).column(0).to_pylist(), [False] * n
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        paths = [None] * n
        embedded = pc.is_valid(table.column(image_column)).to_pylist() if arrow else _parquet_embedded(pf, image_column)
    else:
        raise DsmdError(
            f"{path}: column '{image_column}' has type {kind}; expected a datasets Image "
            "feature, a path string or image bytes. Set data.image_column."
        )
    for r in range(n):
        if not (embedded[r] or paths[r]):
            raise DsmdError(f"{path}: row {r} has no image in column '{image_column}'. Remove the row.")
    return captions, splits, paths, embedded


def _is_text(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _parquet_embedded(pf, leaf: str) -> list[bool]:
    """Per row, whether the parquet leaf column ``leaf`` (e.g. ``image.bytes``) holds a value.

    The per-row-group null counts answer for groups that are all null or all set, without
    reading a byte of image data; only a mixed group has the column read.
    """
    import pyarrow.compute as pc

    meta = pf.metadata
    embedded: list[bool] = []
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        chunk = next(
            (group.column(j) for j in range(group.num_columns) if group.column(j).path_in_schema == leaf), None
        )
        stats = chunk.statistics if chunk is not None else None
        if stats is not None and stats.has_null_count and stats.null_count in (0, group.num_rows):
            embedded += [stats.null_count == 0] * group.num_rows
        else:
            values = pf.read_row_group(g, columns=[leaf]).column(0)
            if "." in leaf:
                values = pc.struct_field(values, leaf.rsplit(".", 1)[1])
            embedded += pc.is_valid(values).to_pylist()
    return embedded


def _texts(caption, where: str, column: str) -> list[str]:
    """The stripped captions of one cell: a string or a non-empty list of non-empty strings."""
    texts = [caption] if isinstance(caption, str) else caption
    if not isinstance(texts, list) or not texts:
        raise DsmdError(
            f"{where}: column '{column}' holds no caption ({type(caption).__name__}). "
            "Set data.caption_column to a text or list column."
        )
    for text in texts:
        if not isinstance(text, str):
            raise DsmdError(
                f"{where}: column '{column}' holds a value of type {type(text).__name__}, not text. "
                "Set data.caption_column to a text or list-of-text column."
            )
        if not text.strip():
            raise DsmdError(f"{where}: empty caption. Fix or remove the row.")
    return [text.strip() for text in texts]


def list_hf(
    manifest: str, root: Path | None, image_column: str = "image", caption_column: str = "caption"
) -> list[Row]:
    """(image reference or path, caption, split) for every caption, in file and row order.

    Raises:
        DsmdError: nothing at ``manifest``; a ``save_to_disk`` JSON file that is not UTF-8
            JSON with its list; a column missing (the message lists the available ones); a
            ``split`` column that is not text; a row without image or caption; a caption that
            is not text.
    """
    rows: list[Row] = []
    image_of: dict[str, str] = {}  # grouping key -> the image's reference
    for path, file_split in data_files(manifest):
        captions, splits, paths, embedded = _columns(path, image_column, caption_column)
        base = root or path.parent
        for r, (caption, split) in enumerate(zip(captions, splits, strict=True)):
            where = f"{path}: row {r}"
            if embedded[r]:
                ref = table_ref(path, r, image_column)
                key = paths[r] if isinstance(caption, str) and paths[r] else ref
            else:
                ref = key = resolve(paths[r], base)
            ref = image_of.setdefault(key, ref)
            rows.extend((ref, text, split or file_split) for text in _texts(caption, where, caption_column))
    return rows
