"""Result tables and report files (``report.json`` for programs, ``report.md`` for people)."""

from __future__ import annotations

from pathlib import Path

from dsmd.store.feature_store import write_json_atomic

METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
REPORT_KEYS = (*METRIC_KEYS, "params", "image_latency_ms", "text_latency_ms")


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "params":
        return f"{value / 1e6:.2f}M"
    if key.endswith("latency_ms"):
        return f"{value:.2f}"
    return f"{value:.1f}"


def format_table(rows: dict[str, dict]) -> str:
    """A Markdown table, one row per model, columns :data:`REPORT_KEYS` present in any row."""
    keys = [k for k in REPORT_KEYS if any(k in r for r in rows.values())]
    header = ["model", *keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, row in rows.items():
        lines.append("| " + " | ".join([name, *(_fmt(k, row.get(k)) for k in keys)]) + " |")
    return "\n".join(lines)


def write_report(out_dir: str | Path, rows: dict[str, dict], notes: dict | None = None) -> tuple[Path, Path]:
    """Write ``report.json`` (``rows`` plus ``notes`` under ``"meta"``) and ``report.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = dict(rows)
    if notes:
        payload["meta"] = notes
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    write_json_atomic(json_path, payload)
    md = ["# dsmd report", "", format_table(rows), ""]
    if notes:
        md += ["", "## Details", ""] + [f"- **{k}**: {v}" for k, v in notes.items()] + [""]
    tmp = md_path.with_name(md_path.name + ".tmp")
    tmp.write_text("\n".join(md))
    tmp.replace(md_path)
    return json_path, md_path
