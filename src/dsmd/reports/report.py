"""Result tables and report files (``report.json`` for programs, ``report.md`` for people)."""

from __future__ import annotations

from pathlib import Path

from dsmd.runtime.files import write_json_atomic, write_text_atomic

METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
REPORT_KEYS = (*METRIC_KEYS, "params", "image_latency_ms", "text_latency_ms")
HEADERS = {
    "i2t_r1": "i2t R@1",
    "i2t_r5": "i2t R@5",
    "i2t_r10": "i2t R@10",
    "t2i_r1": "t2i R@1",
    "t2i_r5": "t2i R@5",
    "t2i_r10": "t2i R@10",
    "rsum": "RSUM",
    "params": "params",
    "image_latency_ms": "ms / image",
    "text_latency_ms": "ms / caption",
}


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "params":
        return f"{value / 1e6:.2f}M"
    if key.endswith("latency_ms"):
        return f"{value:.2f}"
    return f"{value:.1f}"


def format_table(rows: dict[str, dict]) -> str:
    """A Markdown table, one row per model, columns :data:`REPORT_KEYS` present in any row
    (recalls in percent, headed as in :data:`HEADERS`)."""
    keys = [k for k in REPORT_KEYS if any(k in r for r in rows.values())]
    header = ["model", *(HEADERS[k] for k in keys)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, row in rows.items():
        lines.append("| " + " | ".join([name, *(_fmt(k, row.get(k)) for k in keys)]) + " |")
    return "\n".join(lines)


LEGEND = (
    "Columns: **i2t** is image→text retrieval (an image queries all captions; R@K is the percentage of images with "
    "one of their own captions in the top K), **t2i** is text→image (a caption queries all images; R@K is the "
    "percentage of captions whose image is in the top K); ties count in favour of the correct item. **rsum** is the "
    "sum of the six recalls (600 at most); all recalls are percentages. **params** counts both towers and their projections; **ms / image** and "
    "**ms / caption** are the median time per item of encoding a batch (images already decoded and resized; "
    "captions including tokenisation)."
)


def student_shares(student: dict, teacher: dict) -> dict[str, float]:
    """The student's RSUM, R@1 in each direction (where both rows have them), latency and parameters
    as shares of the teacher's (NaN where the teacher's is 0).

    Latency is per image plus per caption: what encoding one image-caption pair costs.
    """

    def share(mine: float, theirs: float) -> float:
        return mine / theirs if theirs else float("nan")

    latency = (
        student["image_latency_ms"] + student["text_latency_ms"],
        teacher["image_latency_ms"] + teacher["text_latency_ms"],
    )
    recalls = {k: share(student[k], teacher[k]) for k in ("i2t_r1", "t2i_r1") if k in student and k in teacher}
    return {
        "rsum": share(student["rsum"], teacher["rsum"]),
        **recalls,
        "latency": share(*latency),
        "params": share(student["params"], teacher["params"]),
    }


def format_shares(shares: dict[str, float], heldout: dict[str, float] | None = None) -> str:
    """One line for people: ``student / teacher: RSUM 105.0% (R@1 i2t 82.0%, t2i 59.0%), latency 10.5%
    (...), parameters 24.9%``, then the RSUM share on each held-out kind (``{name: share}``)."""
    recalls = [f"{d} {100 * shares[k]:.1f}%" for d, k in (("i2t", "i2t_r1"), ("t2i", "t2i_r1")) if k in shares]
    line = (
        f"**student / teacher**: RSUM {100 * shares['rsum']:.1f}%"
        + (f" (R@1 {', '.join(recalls)})" if recalls else "")
        + f", latency {100 * shares['latency']:.1f}% (ms per image + ms per caption), parameters "
        f"{100 * shares['params']:.1f}%"
    )
    if heldout:
        line += "; RSUM on other kinds of images: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in heldout.items())
    return line


def _plain(value) -> str:
    """A value for people: nested mappings as ``key: value`` lists, lists comma-separated."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def write_report(
    out_dir: str | Path,
    rows: dict[str, dict],
    notes: dict | None = None,
    pictures: list | None = None,
    summary: str | None = None,
    tables: dict[str, dict[str, dict]] | None = None,
    extra: dict | None = None,
) -> tuple[Path, Path]:
    """Write ``report.json`` (``rows``, the keys of ``extra``, and ``notes`` under ``"meta"``) and
    ``report.md`` (with ``summary``, a line of Markdown, under the table, each of ``tables``
    (``title: rows``) as a table of its own, and ``pictures``, paths relative to ``out_dir``,
    after them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**rows, **(extra or {})}
    if notes:
        payload["meta"] = notes
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    write_json_atomic(json_path, payload)
    md = ["# dsmd report", "", format_table(rows), "", *([summary, ""] if summary else [])]
    for title, table in (tables or {}).items():
        md += [f"## {title}", "", format_table(table), ""]
    md += [LEGEND, ""]
    if pictures:
        md += ["## Training", ""] + [f"![{Path(p).stem}]({p})" for p in pictures] + [""]
    if notes:
        md += ["", "## Details", ""] + [f"- **{k}**: {_plain(v)}" for k, v in notes.items()] + [""]
    write_text_atomic(md_path, "\n".join(md))
    return json_path, md_path
