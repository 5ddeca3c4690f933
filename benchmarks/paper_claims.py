"""The paper's claims against a set of finished sweeps: one markdown table per claim.

Reads the ``sweep.json`` of each offline table (``dsmd sweep offline_table...``) and prints,
for every comparison the paper makes (Tables 2 and 4-10), the paper's RSUM difference beside
the measured one: the mean over seeds of the per-seed difference (runs of the same seed share
their data order and initialisation, so the comparison is paired), its standard error, and a
verdict from a paired t-test at 95% (two-sided, ``n - 1`` degrees of freedom; ``paired_stats.py``):

- **holds**: the measured difference has the paper's sign and is significant;
- **opposite**: it is significant with the other sign;
- **cannot tell**: not significant (with 3 seeds a difference must be about 4.3 standard
  errors to count);
- **differs**: significant, where the paper gives no figure to compare the sign with;
- **identical runs**: every seed gave exactly the same result (the setting changed nothing).

    python benchmarks/paper_claims.py --sweeps sweeps/offline > docs/results_tables.md
    python benchmarks/paper_claims.py --sweeps sweeps/offline --json claims.json

Every figure in docs/results.md comes from this script's output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_stats import paired, significance  # noqa: E402

# (table folder, the paper's default variant, {variant: paper RSUM}); the default first.
CLAIMS = [
    (
        "table5_balancer",
        "Table 5: the balancer",
        "dynamic balancer",
        {"dynamic balancer": 528.8, "static weights, all 1 (no balancer)": 448.1, "published code (reference)": None},
    ),
    (
        "table6_l2",
        "Table 6: L2 normalisation",
        "L2-normalised",
        {"L2-normalised": 528.8, "not normalised": 318.9},
    ),
    (
        "table4_losses",
        "Table 4: the losses",
        "all four",
        {
            "all four": 528.8,
            "without CD": 524.2,
            "without FD": 492.9,
            "without SD": 523.3,
            "without HND": 519.3,
            "CD only": 503.2,
            "FD only": 501.4,
            "SD only": 506.4,
            "HND only": 426.7,
            "CD + FD": None,
            "CD + SD": None,
            "CD + HND": None,
            "FD + SD": None,
            "FD + HND": None,
            "SD + HND": None,
        },
    ),
    (
        "table7_tau",
        "Table 7: CD temperature τ",
        "loss.temperature=0.05",
        {
            "loss.temperature=0.05": 528.8,
            "loss.temperature=0.2": 521.1,
            "loss.temperature=0.5": 522.6,
            "loss.temperature=1.0": 521.7,
        },
    ),
    (
        "table8_queue",
        "Table 8: queue size K",
        "loss.queue_size=8192",
        {
            "loss.queue_size=8192": 528.8,
            "loss.queue_size=1024": 525.4,
            "loss.queue_size=2048": 526.3,
            "loss.queue_size=4096": 528.4,
            "loss.queue_size=16384": 525.0,
        },
    ),
    (
        "table9_margin",
        "Table 9: HND margin α",
        "loss.margin=0.0",
        {
            "loss.margin=0.0": 528.8,
            "loss.margin=0.05": 518.6,
            "loss.margin=0.2": 522.9,
            "loss.margin=0.5": 521.7,
            "loss.margin=1.0": 522.7,
        },
    ),
    (
        "table10_balancer_temperature",
        "Table 10: balancer temperature T",
        "balancer.temperature=1.0",
        {
            "balancer.temperature=1.0": 528.8,
            "balancer.temperature=0.05": 447.5,
            "balancer.temperature=0.2": 511.0,
            "balancer.temperature=0.5": 526.4,
        },
    ),
    (
        "table2_baselines",
        "Table 2: other distillers",
        "DSMD (CD + FD + SD + HND)",
        {
            "DSMD (CD + FD + SD + HND)": 528.8,
            "KD": 444.4,
            "hint (FitNets)": 513.8,
            "DCD": 484.5,
            "CLIP-KD (ICL + feature hint)": 513.5,
            "RKD": None,
            "CLIP loss, no teacher": None,
            "DSMD + CLIP loss (teacher and pairs)": None,
        },
    ),
]


def _rows(folder: Path) -> dict[str, dict] | None:
    path = folder / "sweep.json"
    if not path.is_file():
        return None
    return {row["name"]: row for row in json.loads(path.read_text())["rows"]}


def verdict(paper_diff: float | None, test: dict) -> str:
    """The verdict of a :func:`paired_stats.paired` test against the paper's difference (module docstring)."""
    state = significance(test)
    if state != "significant":
        return state
    if paper_diff is None or paper_diff == 0:
        return "differs"
    return "holds" if (test["diff_mean"] > 0) == (paper_diff > 0) else "opposite"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def claims(sweeps: Path) -> list[dict]:
    """One entry per table: its rows with the paper's figure, the measured one and the verdict."""
    tables = []
    for folder, title, default_name, paper in CLAIMS:
        rows = _rows(sweeps / folder)
        if rows is None or default_name not in rows:
            tables.append({"table": folder, "title": title, "missing": True})
            continue
        default = rows[default_name]
        entries = []
        for name, paper_rsum in paper.items():
            if name not in rows or rows[name]["n"] == 0:
                continue
            row = rows[name]
            entry = {
                "name": name,
                "paper_rsum": paper_rsum,
                "rsum_mean": row["rsum_mean"],
                "rsum_std": row["rsum_std"],
                "n": row["n"],
            }
            if name != default_name:
                paper_diff = None if paper_rsum is None else paper[default_name] - paper_rsum
                test = paired(default, row)
                entry.update(paper_diff=paper_diff, **test, verdict=verdict(paper_diff, test))
            entries.append(entry)
        tables.append({"table": folder, "title": title, "default": default_name, "rows": entries})
    return tables


def markdown(tables: list[dict]) -> str:
    out = []
    for table in tables:
        out.append(f"### {table['title']}\n")
        if table.get("missing"):
            out.append(f"(no finished sweep in `{table['table']}`)\n")
            continue
        out.append(
            f"Differences are `{table['default']}` minus the row (RSUM points), paired by seed; "
            "± is one standard error.\n"
        )
        out.append("| variant | paper RSUM | measured RSUM (mean ± std, n) | paper Δ | measured Δ | verdict |")
        out.append("|---|---|---|---|---|---|")
        for e in table["rows"]:
            measured = f"{e['rsum_mean']:.1f} ± {_fmt(e['rsum_std'])} ({e['n']})"
            if "verdict" in e:
                delta = f"{_fmt(e['diff_mean'])} ± {_fmt(e['diff_se'])}"
                out.append(
                    f"| {e['name']} | {_fmt(e['paper_rsum'])} | {measured} | {_fmt(e['paper_diff'])} | {delta} | "
                    f"{e['verdict']} |"
                )
            else:
                out.append(f"| **{e['name']}** (reference) | {_fmt(e['paper_rsum'])} | {measured} | | | |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", default="sweeps/offline", help="folder holding the tables' sweep folders")
    parser.add_argument("--json", help="also write the tables as JSON here")
    args = parser.parse_args(argv)
    tables = claims(Path(args.sweeps))
    if args.json:
        Path(args.json).write_text(json.dumps(tables, indent=2) + "\n")
    sys.stdout.write(markdown(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
