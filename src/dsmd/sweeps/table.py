"""A sweep's table: each variant's mean and standard deviation over its seeds.

``OUT/sweep.json``: ``{"sweep", "base", "description", "rows": [...], "failed": [...]}``, a row per
variant with its ``name``, ``overrides``, ``n`` (finished seeds), ``seeds``, and for every metric of
``dsmd eval --json`` (``i2t_r1`` ... ``rsum``) ``<metric>_mean``, ``<metric>_std`` (the sample
standard deviation over seeds, 0 for one seed) and ``<metric>_values``; ``OUT/sweep.csv`` the same
rows flat; ``OUT/sweep.md`` a table of mean ± std; ``OUT/sweep_<axis>.png`` for every numeric
grid axis: test RSUM against the axis's value, with error bars.
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any

from dsmd.errors import DsmdError
from dsmd.reports.report import METRIC_KEYS
from dsmd.runtime.files import atomic_path, read_json, write_json_atomic, write_text_atomic
from dsmd.sweeps.records import read_records, record_path
from dsmd.sweeps.spec import Run, Sweep


def _result(run: Run) -> dict[str, float] | None:
    """The run's test metrics: from its record (:mod:`dsmd.sweeps.records`), else its folder's ``test.json``."""
    record = read_records(record_path(run.folder.parent)).get(run.folder.name)
    path = run.folder / "test.json"
    if record is not None:
        data = record["test"]
    elif path.is_file():
        data = read_json(path, f"Delete it to score run {run.folder} again (dsmd sweep resumes).")
    else:
        return None
    if not all(isinstance(data.get(k, 0.0), int | float) for k in METRIC_KEYS):
        raise DsmdError(f"{path} is damaged (a metric that is not a number). Delete it to score the run again.")
    return {k: float(data[k]) for k in METRIC_KEYS if k in data}


def collect(sweep: Sweep, failed: list[Run] | None = None) -> dict[str, Any]:
    """The table of ``sweep`` from its runs' ``test.json`` files (see the module docstring)."""
    rows = []
    for name, overrides in sweep.variants.items():
        runs = [r for r in sweep.runs if r.variant == name]
        results = [(r.seed, res) for r in runs if (res := _result(r)) is not None]
        row: dict[str, Any] = {
            "name": name,
            "overrides": overrides,
            "n": len(results),
            "seeds": [seed for seed, _ in results],
        }
        for key in METRIC_KEYS:
            values = [res[key] for _, res in results if key in res]
            row[f"{key}_mean"] = statistics.fmean(values) if values else None
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else None
            row[f"{key}_values"] = values
        rows.append(row)
    return {
        "sweep": sweep.name,
        "base": sweep.base,
        "description": sweep.description,
        "seeds": sweep.seeds,
        "rows": rows,
        "failed": [{"name": r.variant, "seed": r.seed, "folder": str(r.folder)} for r in failed or []],
    }


def _csv(table: dict[str, Any]) -> str:
    buf = io.StringIO()
    keys = ["name", "overrides", "n", "seeds", *(f"{k}_{s}" for k in METRIC_KEYS for s in ("mean", "std"))]
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in table["rows"]:
        writer.writerow({**row, "overrides": " ".join(row["overrides"]), "seeds": " ".join(map(str, row["seeds"]))})
    return buf.getvalue()


def _cell(row: dict[str, Any], key: str) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    return "–" if mean is None else f"{mean:.1f} ± {std:.1f}"


def _markdown(table: dict[str, Any], plots: list[Path]) -> str:
    head = ["variant", "n", "i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10", "RSUM"]
    lines = [
        f"# Sweep {table['sweep']}",
        "",
        table["description"] or f"Base config: {table['base']}.",
        "",
        f"Test split, mean ± standard deviation over seeds {table['seeds']} (recalls in percent; RSUM is their "
        "sum, at most 600).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for row in table["rows"]:
        lines.append("| " + " | ".join([row["name"], str(row["n"]), *(_cell(row, k) for k in METRIC_KEYS)]) + " |")
    if table["failed"]:
        lines += [
            "",
            "Failed runs: "
            + "; ".join(f"{f['name']} (seed {f['seed']}, {f['folder']}/error.txt)" for f in table["failed"]),
        ]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def plot_axes(sweep: Sweep, table: dict[str, Any]) -> list[Path]:
    """One PNG per numeric grid axis: RSUM (mean ± std over seeds) against the axis's value."""
    numeric = {
        axis: values
        for axis, values in sweep.axes.items()
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    }
    if not numeric:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    rows = {row["name"]: row for row in table["rows"]}
    for axis, values in numeric.items():
        others = [a for a in sweep.axes if a != axis]
        fig, ax = plt.subplots(figsize=(6, 3.8))
        groups: dict[str, list[tuple[float, dict]]] = {}
        for name, overrides in sweep.variants.items():
            setting = dict(o.split("=", 1) for o in overrides)
            label = ", ".join(f"{a}={setting[a]}" for a in others)
            groups.setdefault(label, []).append((float(setting[axis]), rows[name]))
        for label, points in groups.items():
            points = sorted((x, r) for x, r in points if r["rsum_mean"] is not None)
            ax.errorbar(
                [x for x, _ in points],
                [r["rsum_mean"] for _, r in points],
                yerr=[r["rsum_std"] for _, r in points],
                marker="o",
                capsize=4,
                label=label or None,
            )
        ax.set_xlabel(axis)
        ax.set_ylabel("test RSUM (mean ± std)")
        ax.set_title(f"{sweep.name}: RSUM against {axis}")
        if len(values) > 2 and min(values) > 0 and max(values) / min(values) >= 16:
            ax.set_xscale("log", base=2)
        if others:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        path = sweep.out_dir / f"sweep_{axis.replace('.', '_')}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def write_table(sweep: Sweep, failed: list[Run] | None = None) -> dict[str, Any]:
    """Write sweep.json, sweep.csv, sweep.md and the plots into the sweep's ``out_dir``."""
    sweep.out_dir.mkdir(parents=True, exist_ok=True)
    table = collect(sweep, failed)
    plots = plot_axes(sweep, table)
    write_json_atomic(sweep.out_dir / "sweep.json", table)
    write_text_atomic(sweep.out_dir / "sweep.csv", _csv(table))
    write_text_atomic(sweep.out_dir / "sweep.md", _markdown(table, plots))
    return table
