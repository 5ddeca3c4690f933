"""The GPU path, measured: the paper's student at speed, mixed precision, extraction, evaluation.

One command, one JSON line per figure (and all of them in ``--out DIR/gpu_check.jsonl``):

1. ``train``: training throughput (pairs/s) and peak GPU memory of the paper's student
   (ViT-B/16 at 224 px + BERT-base, 32 tokens, random weights), batch 64 and 256, fp32 / bf16 /
   fp16 autocast, eager (and ``torch.compile`` for ``--compile-precisions``), for dsmd's whole
   step (four losses, a queue of 8,192, the balancer) and for the bare student step (forward,
   backward, AdamW) on the same tensors, already on the GPU; ``share`` = dsmd / bare (goal >= 0.9).
   ``train_loader``: once more through the real loader (generated JPEGs, ``--workers`` processes).
2. ``extract``: images and captions per second of a BEiT-3 base retrieval model (official
   checkpoint layout, 384 px) and a CLIP of ViT-L/14 size, in float16, through dsmd's extraction.
3. ``eval``: ``retrieval_metrics`` on 5,000 x 25,000 and 25,000 x 125,000 (D = 768) against the
   similarity product alone.
4. ``correctness``: a short bf16 run against fp32 on small generated data (test RSUM within
   ``--rsum-tolerance``), and a checkpoint written on the GPU resumed on the CPU.

Nothing is downloaded: every model is built from a config with random weights
(``benchmarks/gpu_fixtures.py``). Without CUDA (or with ``--dry-run``) everything runs in tiny
sizes on the CPU, to check the script before spending device time.

    PYTHONPATH=src python benchmarks/gpu_check.py --out OUT            # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --dry-run                 # here

On the lent GPU machine (Python 3.12 with a CUDA torch and transformers already there), dsmd
also needs ``webdataset`` and ``braceexpand`` (pure-Python wheels, carried in ``.whl``):
``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export
PYTHONPATH=/tmp/site:src``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_fixtures as fx  # noqa: E402

from dsmd.balancer import LossBalancer  # noqa: E402
from dsmd.config import DataConfig, StudentConfig, TrainConfig  # noqa: E402
from dsmd.data.batches import PairBatch, PairCollator  # noqa: E402
from dsmd.losses import MultiscaleDistillationLoss  # noqa: E402
from dsmd.models import build_student  # noqa: E402
from dsmd.runtime.distributed import Distributed  # noqa: E402
from dsmd.training.setup import wrap_student  # noqa: E402
from dsmd.training.step import DistillationStep, autocast_dtype  # noqa: E402

RECORDS: list[dict] = []


def emit(record: dict) -> None:
    RECORDS.append(record)
    print(json.dumps(record), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def student_for(size: str, root: Path, device: torch.device):
    vit, bert = fx.student_towers(root, size)
    side = fx.SIZES[size]["vit"]["image_size"]
    cfg = StudentConfig(
        vision=vit,
        vision_pretrained=False,
        text=bert,
        text_pretrained=False,
        image_size=side,
        text_pooling="cls",
        max_text_length=32,
    )
    torch.manual_seed(0)
    return build_student(cfg, fx.SIZES[size]["dim"]).to(device), side


def synthetic_batch(student, batch: int, side: int, size: str, device: torch.device) -> PairBatch:
    g = torch.Generator().manual_seed(batch)
    dim = fx.SIZES[size]["dim"]
    tokens = student.tokenize(fx.captions(batch, fx.SIZES[size]["bert"]["vocab_size"]))
    return PairBatch(
        pixel_values=torch.randn(batch, 3, side, side, generator=g),
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        caption_index=torch.arange(batch),
        image_index=torch.arange(batch) // 5,
        view_index=torch.zeros(batch, dtype=torch.long),
        teacher_image=F.normalize(torch.randn(batch, dim, generator=g), dim=-1),
        teacher_text=F.normalize(torch.randn(batch, dim, generator=g), dim=-1),
        real=torch.ones(batch, dtype=torch.bool),
    ).to(device)


def dsmd_stepper(student, precision: str, compile_: bool, batch: int, device: torch.device, queue: int):
    dim = student.dim
    objective = MultiscaleDistillationLoss(dim, queue_size=queue).to(device)
    for _ in range(-(-queue // batch)):  # a full queue, as after the first epoch
        feats = F.normalize(torch.randn(batch, dim, device=device), dim=-1)
        objective.update_queue(feats, feats, torch.randint(0, 10**6, (batch,), device=device))
    optimizer = torch.optim.AdamW([{"params": list(student.parameters()), "lr_scale": 1.0}], lr=1e-5)
    cfg = TrainConfig(batch_size=batch, precision=precision, compile=compile_)
    ctx = Distributed(device=device)
    return DistillationStep(
        student,
        wrap_student(student, ctx, compile_),
        objective,
        LossBalancer(["cd", "fd", "sd", "hnd"]),
        optimizer,
        ctx,
        cfg,
    )


def bare_step(student, precision: str, compile_: bool, device: torch.device):
    model = torch.compile(student) if compile_ else student
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    dtype = autocast_dtype(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step(b: PairBatch) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            image, text = model(b.pixel_values, b.input_ids, b.attention_mask)
        loss = -(image.float() * b.teacher_image).sum() - (text.float() * b.teacher_text).sum()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(fn, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return time.perf_counter() - t0


def section_train(args, root: Path, device: torch.device) -> None:
    student, side = student_for(args.size, root, device)
    for batch in args.batches:
        data = synthetic_batch(student, batch, side, args.size, device)
        for precision in args.precisions:
            for compile_ in (False, True):
                if compile_ and precision not in args.compile_precisions:
                    continue
                record = {"section": "train", "batch": batch, "precision": precision, "compile": compile_}
                try:
                    reset_peak(device)
                    stepper = dsmd_stepper(student, precision, compile_, batch, device, args.queue)
                    seconds = timed(lambda s=stepper, d=data: s([(d, True)]), device, args.warmup, args.steps)
                    record.update(pairs_per_s=round(batch * args.steps / seconds, 1), peak_gib=peak_gib(device))
                    reset_peak(device)
                    bare = bare_step(student, precision, compile_, device)
                    seconds = timed(lambda s=bare, d=data: s(d), device, args.warmup, args.steps)
                    record.update(
                        bare_pairs_per_s=round(batch * args.steps / seconds, 1), bare_peak_gib=peak_gib(device)
                    )
                    record["share"] = round(record["pairs_per_s"] / record["bare_pairs_per_s"], 3)
                except Exception as exc:  # noqa: BLE001 - report and go on with the other figures
                    record["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                emit(record)
    section_train_loader(args, root, device, student, side)


def section_train_loader(args, root: Path, device: torch.device, student, side: int) -> None:
    """The same step fed by the real loader: JPEG decoding, crops, tokenisation in the workers."""
    from dsmd.data.datasets import load_split
    from dsmd.data.loader import ImageCache, PairDataset
    from dsmd.store import SplitFeatures
    from dsmd.training.batches import epoch_micro_batches

    manifest = fx.jpeg_dataset(
        root / "jpegs", args.loader_images, side + side // 7, fx.SIZES[args.size]["bert"]["vocab_size"]
    )
    data = load_split(DataConfig(kind="manifest", manifest=str(manifest), val_fraction=0, test_fraction=0), "train")
    dim = student.dim
    targets = SplitFeatures(
        F.normalize(torch.randn(data.num_images, dim), dim=-1),
        F.normalize(torch.randn(len(data), dim), dim=-1),
        torch.tensor(data.caption_image),
    )
    pairs = PairDataset(data, student.image_transform(train=True), targets, ImageCache(enabled=False))
    batch, precision = args.batches[-1], args.loader_precision
    stepper = dsmd_stepper(student, precision, False, batch, device, args.queue)
    ctx = Distributed(device=device)
    loader = epoch_micro_batches(pairs, PairCollator(student.caption_tokenizer()), batch, 0, 0, 0, ctx, args.workers)
    steps, t0, started = 0, None, None
    for micro in loader:
        stepper([(micro, True)])
        steps += 1
        if steps == args.warmup:
            sync(device)
            t0, started = time.perf_counter(), steps
    sync(device)
    record = {
        "section": "train_loader",
        "batch": batch,
        "precision": precision,
        "workers": args.workers,
        "images": data.num_images,
        "pairs": len(data),
    }
    if t0 is not None and steps > started:
        record["pairs_per_s"] = round(batch * (steps - started) / (time.perf_counter() - t0), 1)
    emit(record)


def section_extract(args, root: Path, device: torch.device) -> None:
    from dsmd.config import TeacherConfig
    from dsmd.data.datasets import load_split
    from dsmd.extraction.chunks import CHUNK_SIZE, _Chunks, _encode_images, _encode_texts
    from dsmd.teachers import build_teacher

    dtype = "float16" if device.type == "cuda" else "float32"
    checkpoint, spm = fx.beit3_teacher(root, args.size)
    teachers = {
        "beit3_base": TeacherConfig(kind="beit3", name_or_path=checkpoint, tokenizer=spm, dtype=dtype),
        "clip_vitl14": TeacherConfig(kind="hf_clip", name_or_path=fx.clip_teacher(root, args.size), dtype=dtype),
    }
    manifest = fx.jpeg_dataset(root / "jpegs_extract", args.extract_images, 320, 60)
    data = load_split(DataConfig(kind="manifest", manifest=str(manifest), val_fraction=0, test_fraction=0), "train")
    for name, cfg in teachers.items():
        record = {
            "section": "extract",
            "teacher": name,
            "dtype": dtype,
            "images": data.num_images,
            "captions": len(data),
            "batch": args.extract_batch,
        }
        try:
            teacher = build_teacher(cfg, device)
            sync(device)
            t0 = time.perf_counter()
            _encode_images(
                teacher,
                data,
                _Chunks(None, "image"),
                device,
                args.extract_batch,
                args.workers,
                CHUNK_SIZE,
                None,
                "images",
                False,
            )
            sync(device)
            record["images_per_s"] = round(data.num_images / (time.perf_counter() - t0), 1)
            t0 = time.perf_counter()
            _encode_texts(teacher, data, _Chunks(None, "text"), args.extract_batch, CHUNK_SIZE, "captions", False)
            sync(device)
            record["captions_per_s"] = round(len(data) / (time.perf_counter() - t0), 1)
            record["params"] = int(teacher.num_parameters())
            del teacher
        except Exception as exc:  # noqa: BLE001
            record["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        emit(record)


def section_eval(args, root: Path, device: torch.device) -> None:
    from dsmd.evaluation.retrieval import retrieval_metrics

    for images in args.eval_images:
        captions, dim = 5 * images, 768
        g = torch.Generator(device=device).manual_seed(0)
        image = F.normalize(torch.randn(images, dim, device=device, generator=g), dim=-1)
        ids = torch.arange(captions, device=device) // 5
        text = F.normalize(image[ids] + 0.5 * torch.randn(captions, dim, device=device, generator=g), dim=-1)
        product = timed(lambda t=text, i=image: torch.mm(t, i.T), device, 1, 3) / 3
        t0 = time.perf_counter()
        metrics = retrieval_metrics(image, text, ids)
        sync(device)
        seconds = time.perf_counter() - t0
        emit(
            {
                "section": "eval",
                "images": images,
                "captions": captions,
                "dim": dim,
                "product_s": round(product, 4),
                "metrics_s": round(seconds, 4),
                "ratio": round(seconds / product, 2),
                "rsum": round(metrics["rsum"], 2),
            }
        )


def section_correctness(args, root: Path, device: torch.device) -> None:
    from dsmd.config import load_config
    from dsmd.data.synthetic import write_synthetic_dataset
    from dsmd.extraction import extract
    from dsmd.scoring import score_checkpoint
    from dsmd.training import train

    vit, bert = fx.student_towers(root, "tiny")
    manifest = write_synthetic_dataset(
        root / "synthetic", num_images=args.correct_images, captions_per_image=2, size=32
    )
    base = [
        "data.kind=manifest",
        f"data.manifest={manifest}",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        "teacher.kind=hf_clip",
        f"teacher.name_or_path={fx.clip_teacher(root, 'tiny')}",
        "teacher.dtype=float32",
        f"student.vision={vit}",
        "student.vision_pretrained=false",
        f"student.text={bert}",
        "student.text_pretrained=false",
        "student.image_size=32",
        "student.vision_head=features",
        "student.vision_proj_init=default",
        "student.max_text_length=16",
        "store_views=0",
        "loss.queue_size=64",
        "train.batch_size=16",
        f"train.epochs={args.correct_epochs}",
        "train.lr=1e-3",
        "train.lr_decay_epochs=[]",
        f"train.device={device.type}",
        f"store={root / 'correct_store'}",
    ]
    extract(load_config(None, base), progress=False, log=lambda *_: None)
    rsum = {}
    for precision in ("fp32", "bf16"):
        out = root / f"correct_{precision}"
        shutil.rmtree(out, ignore_errors=True)
        result = train(
            load_config(None, [*base, f"train.precision={precision}", f"out_dir={out}"]),
            progress=False,
            log=lambda *_: None,
        )
        rsum[precision] = score_checkpoint(result.best_checkpoint, "test", ["train.device=cpu"])[0]["rsum"]
    emit(
        {
            "section": "correctness",
            "what": "bf16 against fp32, test RSUM",
            "fp32_rsum": round(rsum["fp32"], 2),
            "bf16_rsum": round(rsum["bf16"], 2),
            "tolerance": args.rsum_tolerance,
            "ok": abs(rsum["fp32"] - rsum["bf16"]) <= args.rsum_tolerance,
        }
    )
    record = {"section": "correctness", "what": "a checkpoint written on the GPU resumes on the CPU"}
    try:
        resumed = train(
            load_config(None, [f"out_dir={root / 'correct_bf16'}"]),
            resume=True,
            progress=False,
            resume_overrides=["train.device=cpu", "train.precision=fp32", f"train.epochs={args.correct_epochs + 1}"],
            log=lambda *_: None,
        )
        record.update(ok=resumed.steps > 0, steps=resumed.steps)
    except Exception as exc:  # noqa: BLE001
        record.update(ok=False, error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    emit(record)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (automatic without CUDA)")
    p.add_argument("--sections", default="train,extract,eval,correctness")
    p.add_argument("--out", help="also write the records to OUT/gpu_check.jsonl")
    p.add_argument("--work", help="where models and data are made (default: a temporary folder)")
    args = p.parse_args()
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    defaults = dict(
        size="paper",
        batches=[64, 256],
        precisions=["fp32", "bf16", "fp16"],
        compile_precisions=["bf16"],
        warmup=3,
        steps=15,
        queue=8192,
        workers=8,
        loader_images=2000,
        loader_precision="bf16",
        extract_images=2000,
        extract_batch=256,
        eval_images=[5000, 25000],
        correct_images=200,
        correct_epochs=3,
        rsum_tolerance=15.0,
    )
    if not cuda:
        defaults.update(
            size="tiny",
            batches=[8, 16],
            precisions=["fp32", "bf16"],
            compile_precisions=[],
            warmup=1,
            steps=2,
            queue=64,
            workers=2,
            loader_images=64,
            extract_images=32,
            extract_batch=16,
            eval_images=[500],
            correct_images=40,
            correct_epochs=1,
        )
    for key, value in defaults.items():
        setattr(args, key, value)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dsmd_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    emit(
        {
            "section": "device",
            "device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "date": time.strftime("%Y-%m-%d"),
            "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
        }
    )
    sections = {
        "train": section_train,
        "extract": section_extract,
        "eval": section_eval,
        "correctness": section_correctness,
    }
    try:
        for name in args.sections.split(","):
            t0 = time.perf_counter()
            sections[name](args, work, device)
            emit({"section": f"{name}_done", "seconds": round(time.perf_counter() - t0, 1)})
    finally:
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "gpu_check.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
