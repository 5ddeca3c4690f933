"""The compression curve: students of decreasing size, their RSUM and latency as shares of the teacher's.

Trains each student below on the offline benchmark (``dsmd build-benchmark``, config
``offline_benchmark``; ``--epochs`` epochs) once per seed of ``--seeds`` (``train.seed``, default
0 1 2), scores each run's best checkpoint on the test split (``dsmd eval``) and keeps the mean and
the sample standard deviation of the test RSUM over the seeds. It measures each student once
(its first seed's checkpoint: parameters and latency do not depend on the seed) and the teacher
with :func:`dsmd.reports.efficiency.measure_efficiency` (per-item latency at batch 32, images and
captions, median of repeated runs after warm-up, in the same process, so the ratio is taken under
the same load; ``--rounds`` such measurements, 3 by default, and the median share kept), and
draws the mean RSUM share, with the standard deviation as error bars, against the latency share
(image + caption) as one PNG, with the paper's point, the target (at most
30% of the teacher's latency, at least 90% of its RSUM) and the demo's (at most 12.5%, at least
95%). The students run from the largest (A: 192 px, 3 text layers) to the smallest (E: 64 px),
then the compact students G and H (a bag-of-words text tower with a rank-88 embedding table and
a rank-64 ImageNet head, 6.8M parameters: G at 112 px, H at 104 px, the demo's student), drawn
on their own off the line of A-E, then F, the sweeps' student.

Each run has its folder ``OUT/<student>/seed<S>`` (``<student>`` is the part of the name before
':'), which git does not track; what is kept is the study's record ``OUT.jsonl`` beside it
(``sweeps/compression/runs.jsonl``): a line per scored run (``{"kind": "seed", "student", "seed",
"rsum", "teacher_rsum", "validation", "result"}``) and per measured student (``{"kind":
"efficiency", "student", ...}``). What the record holds is skipped when run again (a fresh clone
rebuilds the curve without training), so adding a seed trains only that seed, and an interrupted
run resumes from its last checkpoint. Delete a student's ``efficiency`` line to measure it again
(on a quiet machine; it needs its first seed's checkpoint).

    .venv/bin/python benchmarks/compression_curve.py --png docs/compression.png --seeds 0 1 2

Writes ``OUT/curve.json`` (one row per student: ``rsums``, ``rsum_mean``, ``rsum_std``, ``seeds``,
``rsum_share`` of the mean, the latencies) and ``OUT/curve.md``, and prints the table.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dsmd.config import load_config  # noqa: E402
from dsmd.reports.efficiency import measure_efficiency  # noqa: E402
from dsmd.runtime.files import read_json_lines, write_text_atomic  # noqa: E402

# The demo's recipe: the whole Lite0 with its ImageNet head, the image projection started from
# the teacher's prompt matrix, and the first layers of MiniLM.
_PROMPT_HEAD = [
    "student.vision_blocks=null",
    "student.vision_head=imagenet_probs",
    "student.vision_proj_init=imagenet_prompts",
    "student.max_text_length=32",
]
# The demo's compact student without its resolution: a bag-of-words text tower (no transformer
# layer) with factorised word embeddings and a factorised ImageNet head.
_BAG = [
    *_PROMPT_HEAD,
    "student.text_layers=0",
    "student.text_embedding_rank=88",
    "student.vision_head_rank=64",
    "student.text_positions=32",
]
# name -> overrides of the offline_benchmark config, largest first: resolution and text depth; G
# and H drop the text layers (a bag of words) and factorise the word embeddings and the ImageNet
# head; the last one is the sweeps' student (8 Lite0 blocks at 64 px, fresh projections: depth and width).
STUDENTS = {
    "A: 192 px + 3 text layers": [*_PROMPT_HEAD, "student.image_size=192", "student.text_layers=3"],
    "B: 160 px + 2 text layers": [*_PROMPT_HEAD, "student.image_size=160", "student.text_layers=2"],
    "C: 128 px + 2 text layers": [*_PROMPT_HEAD, "student.image_size=128", "student.text_layers=2"],
    "D: 96 px + 1 text layer": [*_PROMPT_HEAD, "student.image_size=96", "student.text_layers=1"],
    "E: 64 px + 1 text layer": [*_PROMPT_HEAD, "student.image_size=64", "student.text_layers=1"],
    "G: 112 px + bag-of-words text (rank 88), image head rank 64": [*_BAG, "student.image_size=112"],
    "H: the same at 104 px (the demo's student)": [*_BAG, "student.image_size=104"],
    "F: 8 blocks at 64 px, fresh head + 2 text layers (the sweeps' student)": [],
}
PAPER = {"latency_share": 2.1 / 16.5, "rsum_share": 528.8 / 586.5}


def _dsmd(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dsmd", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"dsmd {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def _slug(name: str) -> str:
    """The student's folder name: the part of its name before ':'."""
    return name.split(":")[0]


def _record_file(out: Path) -> Path:
    return out.with_name(out.name + ".jsonl")


def _record(out: Path) -> dict[tuple, dict]:
    """The study's record by ``(kind, student, seed)`` (seed None for efficiency lines)."""
    path = _record_file(out)
    lines = read_json_lines(path, "Restore it from git.") if path.is_file() else []
    return {(r["kind"], r["student"], r.get("seed")): r for r in lines}


def _remember(out: Path, line: dict) -> dict:
    """Add ``line`` to the study's record (rewritten sorted, atomically); returns it."""
    records = _record(out)
    records[(line["kind"], line["student"], line.get("seed"))] = {"format": 1, **line}
    ordered = sorted(records.values(), key=lambda r: (r["student"], r["kind"], r.get("seed") or 0))
    write_text_atomic(_record_file(out), "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered))
    return records[(line["kind"], line["student"], line.get("seed"))]


def _seed_line(folder: Path, student: str, seed: int, scored: dict) -> dict:
    """The record line of a scored run: its score, validation curve and training result."""
    epochs = read_json_lines(folder / "epochs.jsonl", "") if (folder / "epochs.jsonl").is_file() else []
    result = json.loads((folder / "result.json").read_text()) if (folder / "result.json").is_file() else {}
    return {
        "kind": "seed",
        "student": student,
        "seed": seed,
        "rsum": scored["rsum"],
        "teacher_rsum": scored["teacher_rsum"],
        "checkpoint": scored.get("checkpoint"),
        "validation": [{k: e[k] for k in ("epoch", "step", "val_rsum") if k in e} for e in epochs],
        "result": {k: result[k] for k in ("best_val_rsum", "best_epoch", "steps", "seconds") if k in result},
    }


def _train_seed(overrides: list[str], folder: Path, epochs: int, seed: int) -> dict:
    """Train one student with one seed into ``folder`` and score its best checkpoint on the test split.

    A scored run (``folder/curve_seed.json``; ``result.json`` with an ``rsum`` from older versions
    of this script) is read back; a run whose training finished (``dsmd train``'s ``result.json``)
    is only scored; an interrupted one (``checkpoints/last.pt``) is resumed.
    """
    scored = folder / "curve_seed.json"
    if scored.is_file():
        return json.loads(scored.read_text())
    trained = folder / "result.json"
    if trained.is_file() and "rsum" in (done := json.loads(trained.read_text())):
        return done
    if not trained.is_file() and (folder / "checkpoints" / "last.pt").is_file():
        _dsmd("train", "--quiet", "--resume", f"out_dir={folder}")
    elif not trained.is_file():
        schedule = [f"train.epochs={epochs}", f"train.lr_decay_epochs=[{max(1, epochs * 2 // 3)}]"]
        config = [f"out_dir={folder}", *schedule, *overrides, f"train.seed={seed}"]
        _dsmd("train", "--quiet", "--config", "offline_benchmark", *config)
    best = folder / "checkpoints" / "best.pt"
    metrics = json.loads(_dsmd("eval", "--quiet", "--checkpoint", str(best), "--split", "test", "--json"))
    result = {"seed": seed, "rsum": metrics["rsum"], "teacher_rsum": _teacher_rsum(), "checkpoint": str(best)}
    scored.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _efficiency(checkpoint: Path, folder: Path, repeats: int, rounds: int) -> dict:
    """Parameters and latency of a student and of the teacher: the median of ``rounds`` measurements.

    They do not depend on the seed, so one checkpoint is measured and the result kept in
    ``folder/efficiency.json``, which is read back when run again. Each round measures the student
    and the teacher again; the row is the round whose latency share is the median, with every
    round's share in ``latency_shares`` (on a shared CPU one round can be off by a third).
    """
    path = folder / "efficiency.json"
    if path.is_file():
        return json.loads(path.read_text())
    measured = sorted((_measure_once(checkpoint, repeats) for _ in range(rounds)), key=lambda r: r["latency_share"])
    row = {**measured[len(measured) // 2], "latency_shares": [r["latency_share"] for r in measured]}
    path.write_text(json.dumps(row, indent=2) + "\n")
    return row


def _measure_once(checkpoint: Path, repeats: int) -> dict:
    """One :func:`measure_efficiency` of the student and the teacher, as the curve's fields."""
    eff = measure_efficiency(checkpoint, repeats=repeats)
    s, t = eff["student"], eff["teacher"]
    student_latency = s["image_latency_ms"] + s["text_latency_ms"]
    teacher_latency = t["image_latency_ms"] + t["text_latency_ms"]
    return {
        "checkpoint": str(checkpoint),
        "params": s["params"],
        "teacher_params": t["params"],
        "image_latency_ms": s["image_latency_ms"],
        "text_latency_ms": s["text_latency_ms"],
        "teacher_image_latency_ms": t["image_latency_ms"],
        "teacher_text_latency_ms": t["text_latency_ms"],
        "latency_share": student_latency / teacher_latency,
        "torch_threads": eff["torch_threads"],
    }


def _student(
    name: str, overrides: list[str], out: Path, epochs: int, seeds: list[int], repeats: int, rounds: int
) -> dict:
    """One student's row: its test RSUM per seed, their mean and sample std, and its efficiency
    (each read from the study's record when it holds them, else run and recorded)."""
    folder, slug = out / _slug(name), _slug(name)
    results = []
    for seed in seeds:
        line = _record(out).get(("seed", slug, seed))
        if line is None:
            scored = _train_seed(overrides, folder / f"seed{seed}", epochs, seed)
            line = _remember(out, _seed_line(folder / f"seed{seed}", slug, seed, scored))
        results.append(line)
    rsums = [r["rsum"] for r in results]
    teacher_rsum = results[0]["teacher_rsum"]
    mean = statistics.fmean(rsums)
    std = statistics.stdev(rsums) if len(rsums) > 1 else 0.0
    eff = _record(out).get(("efficiency", slug, None))
    if eff is None:
        measured = _efficiency(Path(results[0]["checkpoint"]), folder, repeats, rounds)
        eff = _remember(out, {"kind": "efficiency", "student": slug, **measured})
    eff = {k: v for k, v in eff.items() if k not in ("format", "kind", "student")}
    return {
        "name": name,
        "overrides": overrides,
        "epochs": epochs,
        "seeds": list(seeds),
        "rsums": rsums,
        "rsum_mean": mean,
        "rsum_std": std,
        "teacher_rsum": teacher_rsum,
        "rsum_share": mean / teacher_rsum,
        "rsum_std_share": std / teacher_rsum,
        **{k: v for k, v in eff.items() if k != "checkpoint"},
    }


@functools.cache
def _teacher_rsum() -> float:
    """The teacher's test RSUM from the benchmark's store (every student is trained from it)."""
    store = load_config("offline_benchmark").store
    return json.loads(_dsmd("eval", "--quiet", "--store", store, "--split", "test", "--json"))["rsum"]


def _plot(rows: list[dict], png: Path) -> None:
    """The mean RSUM share (error bars: its std over the seeds) against the latency share."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [100 * r["latency_share"] for r in rows]
    y = [100 * r["rsum_share"] for r in rows]
    err = [100 * r["rsum_std_share"] for r in rows]
    recipe = [i for i, r in enumerate(rows) if "student.vision_head=imagenet_probs" in r["overrides"]]
    bag = [i for i in recipe if "student.text_layers=0" in rows[i]["overrides"]]  # G and H
    line = sorted((i for i in recipe if i not in bag), key=lambda i: x[i])  # along the latency axis
    other = [i for i in range(len(rows)) if i not in recipe]
    seeds = sorted({len(r["seeds"]) for r in rows})
    runs = f"{seeds[0]} seeds" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]} seeds"
    series = [
        (
            line,
            "o-",
            "tab:blue",
            f"dsmd students, the demo's recipe (offline benchmark, 2-core CPU; mean ± std of {runs})",
        )
    ]
    if bag:
        params = f"{rows[bag[0]]['params'] / 1e6:.1f}M parameters"
        series.append((bag, "*", "tab:purple", f"compact students, bag-of-words text, {params} (H: the demo's)"))
    if other:
        series.append((other, "D", "tab:orange", f"the sweeps' student, {rows[other[0]]['epochs']} epochs"))
    for idx, fmt, color, label in series:
        pick = [x[i] for i in idx], [y[i] for i in idx], [err[i] for i in idx]
        size = 12 if fmt == "*" else 6
        ax.errorbar(pick[0], pick[1], yerr=pick[2], fmt=fmt, color=color, capsize=3, markersize=size, label=label)
    for i, (r, xi, yi) in enumerate(zip(rows, x, y, strict=True)):
        arrow = None
        if i in bag:  # the stars sit on each other: their labels go above and below, with an arrow
            offset, arrow = ((24, 22), (24, -30))[bag.index(i) % 2], {"arrowstyle": "-", "color": "grey", "lw": 0.8}
        elif any(abs(x[j] - xi) < 4 and abs(y[j] - yi) < 10 for j in bag):
            offset = (-14, -4)  # keep clear of the stars
        else:
            offset = (6, -10)
        ax.annotate(_slug(r["name"]), (xi, yi), textcoords="offset points", xytext=offset, arrowprops=arrow)
    ax.plot(
        [100 * PAPER["latency_share"]],
        [100 * PAPER["rsum_share"]],
        "s",
        color="tab:red",
        label="the paper's student (Flickr30k, GPU)",
    )
    ax.axvline(30, color="grey", linestyle=":", linewidth=1)
    ax.axhline(90, color="grey", linestyle=":", linewidth=1)
    ax.fill_between([0, 30], 90, 200, color="tab:green", alpha=0.08, label="target: ≤30% latency, ≥90% RSUM")
    demo_target = "the demo's target: ≤12.5% latency, ≥95% RSUM"
    ax.add_patch(plt.Rectangle((0, 95), 12.5, 200, fill=False, color="tab:purple", linestyle="--", label=demo_target))
    ax.set_xlim(0, max(105, max(x) + 5))
    low = min(yi - ei for yi, ei in zip(y, err, strict=True))
    high = max(yi + ei for yi, ei in zip(y, err, strict=True))
    ax.set_ylim(min(0, low - 5), max(110, high + 5))
    ax.set_xlabel("latency, % of the teacher's (image + caption, batch 32)")
    ax.set_ylabel("test RSUM, % of the teacher's")
    ax.set_title("Smaller students: what they keep and what they cost")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(png)


def _share_cell(row: dict) -> str:
    """The median latency share in percent, with the range of the rounds when there were several."""
    shares = [100 * v for v in row.get("latency_shares", [row["latency_share"]])]
    spread = f" ({min(shares):.1f}-{max(shares):.1f})" if len(shares) > 1 else ""
    return f"{100 * row['latency_share']:.1f}{spread}"


def _markdown(rows: list[dict]) -> str:
    """The table: one line per student (RSUM as mean ± sample std over its seeds), then the teacher."""
    lines = [
        "| student | params | test RSUM (mean ± std) | seeds | % of teacher RSUM | ms/image | ms/caption "
        "| % of teacher latency (median of rounds, range) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['rsum_mean']:.1f} ± {r['rsum_std']:.1f} | "
            f"{len(r['seeds'])} | {100 * r['rsum_share']:.1f} | "
            f"{r['image_latency_ms']:.2f} | {r['text_latency_ms']:.2f} | {_share_cell(r)} |"
        )
    t = rows[0]
    lines.append(
        f"| teacher | {t['teacher_params'] / 1e6:.1f}M | {t['teacher_rsum']:.1f} | – | 100 | "
        f"{t['teacher_image_latency_ms']:.2f} | {t['teacher_text_latency_ms']:.2f} | 100 |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        default="sweeps/compression/runs",
        help="OUT/<student>/seed<S> per run, curve.json, curve.md; OUT.jsonl the record",
    )
    parser.add_argument("--png", default="sweeps/compression/compression.png")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed of each student's runs")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per latency (median)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per student (the median share is kept)")
    parser.add_argument("--students", nargs="*", help="names (the part before ':') to run; default all")
    args = parser.parse_args(argv)
    seeds = list(dict.fromkeys(args.seeds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, overrides in STUDENTS.items():
        if args.students and _slug(name) not in args.students:
            continue
        print(f"{name} (seeds {' '.join(map(str, seeds))}) ...", flush=True)
        rows.append(_student(name, overrides, out, args.epochs, seeds, args.repeats, args.rounds))
    (out / "curve.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = _markdown(rows)
    (out / "curve.md").write_text(table)
    _plot(rows, Path(args.png))
    print(table + f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
