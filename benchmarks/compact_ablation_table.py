"""Summarise what ``benchmarks/demo_compact_ablation.sh`` printed: per row, mean ± std over its runs
(seeds and splits) of RSUM and R@1 in each direction on each set, and the shares of the teacher's.

    bash benchmarks/demo_compact_ablation.sh OUT ROW@0 ROW@1 ... | tee ablation.log
    .venv/bin/python benchmarks/compact_ablation_table.py ablation.log [--rows ROW ...] [--json PATH]

Each run is compared with the teacher's figures on the same set and split (``teacher`` lines for
split 0, ``teacher/N`` for split N; the held-out kinds, ``emoji``, ``clipart`` and ``emoji_val``,
are the same images on every split). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from pathlib import Path

SETS = ("val", "test", "emoji_val", "emoji", "clipart")
SAME_ON_EVERY_SPLIT = ("emoji", "clipart", "emoji_val")
LINE = re.compile(r"^(?P<name>\S+) (?P<set>val|test|emoji_val|emoji|clipart) (?P<json>\{.*\})\s*$")


def parse(lines: list[str]) -> tuple[dict, dict]:
    """``(teacher, runs)``: ``teacher[(set, split)]`` metrics; ``runs[row][(seed, split)][set]`` metrics."""
    teacher: dict = {}
    runs: dict = defaultdict(lambda: defaultdict(dict))
    for line in lines:
        m = LINE.match(line.strip())
        if not m:
            continue
        name, which, metrics = m["name"], m["set"], json.loads(m["json"])
        if name == "teacher" or name.startswith("teacher/"):
            split = int(name.split("/")[1]) if "/" in name else 0
            teacher[(which, split)] = metrics
            continue
        base, _, split = name.partition("/")
        row, _, seed = base.partition("@")
        runs[row][(int(seed or 0), int(split or 0))][which] = metrics
    return teacher, runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def summarise(teacher: dict, runs: dict) -> dict:
    """Per row and set: ``n``, mean and std of RSUM and of R@1 each way, and the mean share of the
    teacher's (each run against the teacher on its own split)."""
    table: dict = {}
    for row, by_run in runs.items():
        table[row] = {"runs": sorted(f"{seed}/{split}" for seed, split in by_run)}
        for which in SETS:
            got = [(split, m[which]) for (_, split), m in by_run.items() if which in m]
            if not got:
                continue
            entry = {"n": len(got)}
            for key in ("rsum", "i2t_r1", "t2i_r1"):
                mine = [m[key] for _, m in got]
                ref = [
                    teacher.get((which, 0 if which in SAME_ON_EVERY_SPLIT else split), {}).get(key) for split, _ in got
                ]
                entry[key] = _mean_std(mine)
                shares = [a / b for a, b in zip(mine, ref, strict=True) if b]
                entry[f"{key}_share"] = sum(shares) / len(shares) if shares and len(shares) == len(mine) else None
            table[row][which] = entry
    return table


def markdown(table: dict) -> str:
    head = "| row | runs | " + " | ".join(f"{s} RSUM (share)" for s in SETS) + " | test R@1 i2t / t2i (share) |"
    lines = [head, "|" + "---|" * (len(SETS) + 3)]
    for row, entry in table.items():
        cells = []
        for which in SETS:
            e = entry.get(which)
            if e is None:
                cells.append("")
                continue
            mean, std = e["rsum"]
            share = f" ({100 * e['rsum_share']:.0f}%)" if e["rsum_share"] is not None else ""
            cells.append(f"{mean:.1f} ± {std:.1f}{share}" if e["n"] > 1 else f"{mean:.1f}{share}")
        test = entry.get("test")
        r1 = ""
        if test:
            i2t, t2i = test["i2t_r1"][0], test["t2i_r1"][0]
            shares = [test["i2t_r1_share"], test["t2i_r1_share"]]
            r1 = f"{i2t:.1f} / {t2i:.1f}"
            if None not in shares:
                r1 += f" ({100 * shares[0]:.0f}% / {100 * shares[1]:.0f}%)"
        lines.append(f"| `{row}` | {len(entry['runs'])} | " + " | ".join(cells) + f" | {r1} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", help="what demo_compact_ablation.sh printed (one or more files)")
    p.add_argument("--rows", nargs="*", help="only these rows, in this order")
    p.add_argument("--json", help="also write the summary here")
    args = p.parse_args()
    lines = [line for path in args.logs for line in Path(path).read_text().splitlines()]
    teacher, runs = parse(lines)
    table = summarise(teacher, runs)
    if args.rows:
        table = {row: table[row] for row in args.rows if row in table}
    print(markdown(table))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
