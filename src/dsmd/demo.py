"""``dsmd demo``: the whole pipeline on the embedded offline default.

Tux Paint's captioned photo stamps, the offline teacher (EfficientNet-Lite0 + MiniLM), the
packaged ``demo`` config: extract the teacher's features, distil the student, evaluate both on
the held-out test split and on images of other kinds that the demo never trains on (the
offline benchmark's emoji and clip art test images, :mod:`dsmd.reports.heldout`), write
``report.json`` and ``report.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dsmd.config import load_config, packaged_config
from dsmd.data.datasets import load_dataset
from dsmd.extraction import extract
from dsmd.reports import format_shares, format_table, student_shares, write_report
from dsmd.reports.compare import add_latencies, student_rows, teacher_row
from dsmd.reports.heldout import KINDS, build_heldout_sets, heldout_rows
from dsmd.reports.run_plots import plot_run
from dsmd.runtime.device import resolve_device
from dsmd.runtime.files import check_writable
from dsmd.teachers import build_teacher
from dsmd.training import student_from_checkpoint, train


def run_demo(
    out_dir: str | Path = "demo_out",
    overrides: list[str] | None = None,
    progress: bool = True,
    log=print,
    heldout: dict[str, Path] | None = None,
) -> dict:
    """Run the demo into ``out_dir``; an interrupted demo resumes where it stopped.

    Args:
        heldout: ``{name: manifest}`` of sets of other kinds of images, scored on their test lines
            (None: the offline benchmark's emoji and clip art test images, built into
            ``out_dir/heldout``; ``{}``: none).

    Returns:
        The report: ``{"teacher": {...}, "student": {...}, "asymmetric": {...}, "heldout": {name:
        {"images", "captions", "teacher", "student"}}, "meta": {...}}``.
    """
    out = Path(out_dir)
    check_writable(out, "--out")
    t0 = time.perf_counter()
    cfg = load_config(
        packaged_config("demo"), [f"store={out / 'store'}", f"out_dir={out / 'train'}", *(overrides or [])]
    )
    log("1/4 teacher features -> feature store")
    store = extract(cfg, progress=progress, log=log)
    t_extract = time.perf_counter() - t0

    log("2/4 distilling the student")
    resume = (out / "train" / "checkpoints" / "last.pt").is_file()
    result = train(cfg, resume=resume, progress=progress, log=log)
    t_train = time.perf_counter() - t0 - t_extract

    log("3/4 evaluating teacher and student on the test split and on other kinds of images")
    torch.manual_seed(0)
    device = resolve_device(cfg.train.device)
    test = load_dataset(cfg.data)["test"]
    store.check_dataset("test", test.fingerprint())
    sets = build_heldout_sets(out / "heldout", log) if heldout is None else heldout
    teacher = build_teacher(cfg.teacher, device)
    rows = {"teacher": teacher_row(teacher, store.split("test"))}
    student, _, state = student_from_checkpoint(result.best_checkpoint, device)
    other = {
        name: heldout_rows(teacher, student, path, out / "heldout" / f"teacher_{name}.safetensors", device)
        for name, path in sets.items()
    }
    rows["student"], rows["asymmetric"] = student_rows(student, test, store.split("test"), device)
    timed = {
        "teacher": (teacher.encode_images, teacher.encode_texts, teacher.image_transform),
        "student": (student.encode_images, student.encode_captions, student.image_transform(train=False)),
    }
    add_latencies(rows, timed, test, device)
    del teacher

    log("4/4 report")
    ratio = rows["student"]["rsum"] / rows["teacher"]["rsum"] if rows["teacher"]["rsum"] else float("nan")
    shares = student_shares(rows["student"], rows["teacher"])
    asymmetric = rows["asymmetric"]["rsum"] / rows["student"]["rsum"] if rows["student"]["rsum"] else float("nan")
    other_shares = {
        name: round(o["student"]["rsum"] / o["teacher"]["rsum"], 4) if o["teacher"]["rsum"] else float("nan")
        for name, o in other.items()
    }
    meta = {
        "split": f"test ({test.num_images} images, {len(test)} captions)",
        "heldout": {
            name: f"{o['images']} images, {o['captions']} captions ({sets[name]}): never used in training or choices"
            for name, o in other.items()
        },
        "student_rsum_over_teacher_heldout": other_shares,
        "student_rsum_over_teacher": round(ratio, 4),
        "student_share_of_teacher": {k: round(v, 4) for k, v in shares.items()},
        "asymmetric": "the student's queries against the teacher's stored features of the test split",
        "asymmetric_rsum_over_student": round(asymmetric, 4),
        "best_epoch": result.best_epoch,
        "best_val_rsum": round(result.best_rsum, 2),
        "checkpoint": str(result.best_checkpoint),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "seconds": {
            "extract": round(t_extract, 1),
            "train": round(t_train, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }
    plots = plot_run(out / "train")
    meta["plots"] = ", ".join(str(p.relative_to(out)) for p in plots)
    summary = format_shares(shares, {KINDS.get(name, name): share for name, share in other_shares.items()})
    table = {
        f"{model} · {KINDS.get(name, name)} ({o['images']} images)": o[model]
        for name, o in other.items()
        for model in ("teacher", "student")
    }
    tables = {"Other kinds of images (never used in training)": table} if table else None
    pictures = [p.relative_to(out) for p in plots]
    write_report(out, rows, meta, pictures=pictures, summary=summary, tables=tables, extra={"heldout": other})
    log("\n" + format_table(rows) + "\n\n" + (format_table(table) + "\n\n" if table else "") + summary)
    log(f"\nreport: {out / 'report.json'}, {out / 'report.md'}")
    return {**rows, "heldout": other, "meta": meta}
