"""Size, speed and memory of a run's student and of its teacher (the paper's Table 3): ``dsmd efficiency``.

For each model: its parameters, in total and per tower (the student's vision tower with
``vision_proj`` and text tower with ``text_proj``; the teacher's image and text parts as its
kind organises them, ``None`` where a teacher cannot be split); the latency per image and per
caption at batch 1 and at batch 32 (the median over ``repeats`` timed calls after ``warmup``
untimed ones, with the inter-quartile range and the range of the calls; student and teacher are
timed in turn, one call of each per round, so a machine busy with other work slows both alike
and the student's share of the teacher's latency holds); the throughput at batch 32; and the
peak memory while the model is built and run once on the largest batch.

Inputs are real: images of the run's test split, decoded and preprocessed by each model's own
transform outside the timed region, and the split's captions as strings (tokenising is timed),
as :mod:`dsmd.reports.compare` times them. Batches larger than the split cycle through it.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after a reset, less what was allocated
before the model was built (the tensors torch allocates; not the CUDA context, nor the
allocator's cache). On the CPU it is approximate: the growth of the process's peak resident set
size (``ru_maxrss``) while the model is built and run. On Linux the peak is reset first
(``/proc/self/clear_refs``), so each model's figure is its own; where it cannot be, a model's
growth hides under any higher earlier peak, so the student is measured before the teacher. Either
way it counts whatever else the process allocates meanwhile (weights read before they are copied
into the model, the allocator's free lists), in pages the operating system sees.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsmd.data.datasets import CaptionedImages, load_split
from dsmd.data.loader import ImageCache
from dsmd.errors import DsmdError
from dsmd.evaluation.latency import interleaved_times
from dsmd.reports.compare import timing_captions, timing_pixels
from dsmd.runtime.device import resolve_device
from dsmd.teachers.base import Teacher
from dsmd.teachers.registry import build_teacher
from dsmd.training.checkpoint import checkpoint_config, load_checkpoint, student_from_state

BATCH_SIZES = (1, 32)
_MIB = 2**20


@dataclass
class _Timed:
    """What timing needs of a model: its calls, its preprocessing and its parameter counts."""

    encode_images: Callable[[torch.Tensor], Any]
    encode_texts: Callable[[list[str]], Any]
    image_transform: Callable
    pixel_dtype: torch.dtype
    row: dict


def _count(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def student_params(student) -> dict:
    """``params`` (all), ``image_params`` (vision tower + ``vision_proj``), ``text_params`` (text
    tower + ``text_proj``) and ``shared_params`` (anything else: none in dsmd's students)."""
    total = int(student.num_parameters())
    image = _count(student.vision, student.vision_proj)
    text = _count(student.text, student.text_proj)
    return {"params": total, "image_params": image, "text_params": text, "shared_params": total - image - text}


def _offline_part(name: str) -> str | None:
    return {"image_model": "image", "text_model": "text"}.get(name.split(".")[0])


def _hf_clip_part(name: str, numel: int) -> str | None:
    # CLIP: vision_model + visual_projection, text_model + text_projection, logit_scale; SigLIP:
    # the heads sit inside the towers, logit_scale and logit_bias; ALIGN: temperature.
    top = name.removeprefix("model.").split(".")[0]
    if top.startswith(("vision", "visual", "image")):
        return "image"
    if top.startswith("text"):
        return "text"
    return "shared" if numel <= 1 else None


def _beit3_part(name: str) -> str | None:
    # Every encoder module is a Multiway pair: A serves image tokens, B text tokens.
    parts = name.removeprefix("model.").split(".")
    if parts[0] in ("vision_head", "language_head"):
        return "image" if parts[0] == "vision_head" else "text"
    if parts[0] == "logit_scale":
        return "shared"
    if parts[:2] in (["beit3", "vision_embed"], ["beit3", "text_embed"]):
        return "image" if parts[1] == "vision_embed" else "text"
    if "A" in parts or "B" in parts:
        return "image" if "A" in parts else "text"
    return None


def teacher_params(teacher: Teacher) -> dict:
    """``params`` and, where the teacher's kind has separate towers, ``image_params``,
    ``text_params`` and ``shared_params`` (temperatures, logit scales); ``None`` for each part
    when a parameter belongs to no known part (an unknown model layout)."""
    total = int(teacher.num_parameters())
    parts: dict[str, int] = {"image": 0, "text": 0, "shared": 0}
    split = True
    for name, p in teacher.named_parameters():
        if teacher.kind == "offline":
            part = _offline_part(name)
        elif teacher.kind == "hf_clip":
            part = _hf_clip_part(name, p.numel())
        elif teacher.kind == "beit3":
            part = _beit3_part(name)
        else:
            part = None
        if part is None:
            split = False
            break
        parts[part] += p.numel()
    if not split or sum(parts.values()) != total:
        return {"params": total, "image_params": None, "text_params": None, "shared_params": None}
    return {
        "params": total,
        "image_params": parts["image"],
        "text_params": parts["text"],
        "shared_params": parts["shared"],
    }


class _PeakMemory:
    """The peak memory of what runs inside ``with``, in bytes (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes = 0
        self.method = ""

    def __enter__(self) -> _PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        reset = False
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak RSS (Linux >= 4.0)
                f.write("5")
            reset = True
        self.method = "ru_maxrss growth" + (" after a reset of the peak" if reset else "")
        self._base = _max_rss()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self.bytes = _max_rss() - self._base


def _max_rss() -> int:
    """The process's peak resident set size in bytes (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _spread(ms: list[float]) -> tuple[float, list[float], list[float]]:
    """Median, [first quartile, third quartile] and [minimum, maximum] of per-item times."""
    quartiles = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return statistics.median(ms), [quartiles[0], quartiles[2]], [min(ms), max(ms)]


def _inputs(model: _Timed, data: CaptionedImages, device: torch.device, largest: int) -> dict[str, Any]:
    """``largest`` preprocessed images ``(B, 3, S, S)`` and captions of ``data`` (batches cycle through it)."""
    cache = ImageCache(enabled=True, max_side=10**9)  # decoded once, outside the timed calls
    pixels = timing_pixels(model.image_transform, data, largest, cache).to(device=device, dtype=model.pixel_dtype)
    return {"image": pixels, "text": timing_captions(data, largest)}


def _time_together(
    models: dict[str, tuple[_Timed, dict[str, Any]]], batch_sizes: tuple[int, ...], warmup: int, repeats: int
) -> dict[str, dict]:
    """Latency per item at each batch size and throughput at the largest, of every model timed in
    turn (student, teacher, student, ...: :func:`~dsmd.evaluation.latency.interleaved_times`), so
    that whatever else the machine does slows each alike and their ratio holds."""
    largest = max(batch_sizes)
    rows: dict[str, dict] = {name: {} for name in models}
    for kind in ("image", "text"):
        for b in batch_sizes:
            calls = {}
            for name, (model, inputs) in models.items():
                fn = model.encode_images if kind == "image" else model.encode_texts
                calls[name] = lambda fn=fn, batch=inputs[kind][:b]: fn(batch)
            for name, seconds in interleaved_times(calls, rounds=repeats, warmup=warmup).items():
                median, iqr, extremes = _spread([t / b * 1000.0 for t in seconds])
                rows[name][f"{kind}_latency_ms_b{b}"] = median
                rows[name][f"{kind}_latency_ms_b{b}_iqr"] = iqr
                rows[name][f"{kind}_latency_ms_b{b}_range"] = extremes
    for row in rows.values():
        row["image_latency_ms"], row["text_latency_ms"] = (
            row[f"image_latency_ms_b{largest}"],
            row[f"text_latency_ms_b{largest}"],
        )
        row["images_per_s"], row["captions_per_s"] = 1000.0 / row["image_latency_ms"], 1000.0 / row["text_latency_ms"]
    return rows


def _build(build: Callable[[], _Timed], data, device, largest: int) -> tuple[_Timed, dict[str, Any], float, str]:
    """Build a model, prepare its inputs and run it once on the largest batch, inside one peak-memory
    measurement: ``(model, inputs, peak MiB, method)``."""
    with _PeakMemory(device) as memory, torch.inference_mode():
        model = build()
        inputs = _inputs(model, data, device, largest)
        model.encode_images(inputs["image"])
        model.encode_texts(inputs["text"])
    return model, inputs, memory.bytes / _MIB, memory.method


def _check_arguments(batch_sizes, warmup: int, repeats: int) -> tuple[int, ...]:
    if repeats < 1:
        raise DsmdError(f"--repeats must be at least 1, got {repeats}.")
    if warmup < 0:
        raise DsmdError(f"warmup must be at least 0, got {warmup}.")
    sizes = tuple(sorted({int(b) for b in batch_sizes}))
    if not sizes or sizes[0] < 1:
        raise DsmdError(f"batch sizes must be at least 1, got {list(batch_sizes)}.")
    return sizes


def measure_efficiency(
    checkpoint_path: str | Path,
    device: str | torch.device = "cpu",
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    warmup: int = 2,
    repeats: int = 10,
    split: str = "test",
) -> dict:
    """Parameters, latency, throughput and peak memory of a checkpoint's student and its teacher.

    The student is built and run first, then the teacher from the checkpoint's ``teacher``
    config on the same device (``teacher.dtype=auto``: float16 on CUDA), each inside its own
    peak-memory measurement; then both are timed in turn. A run whose teacher is ``imported``
    has no model to run: ``"teacher"`` is then None, with a note.

    Args:
        checkpoint_path: a checkpoint written by ``dsmd train``.
        device: ``cpu``, ``cuda[:N]`` or ``auto``.
        batch_sizes: the batch sizes timed; ``image_latency_ms`` / ``text_latency_ms`` and the
            throughputs are those of the largest.
        warmup: untimed calls before each timing.
        repeats: timed calls per model, modality and batch size.
        split: whose images and captions are timed.

    Returns:
        ``{"student": row, "teacher": row or None, "device", "split", "images", "captions",
        "batch_sizes", "latency_batch", "warmup", "repeats", "torch_threads", "memory_method",
        "notes"}``; a row has ``name``, ``dtype``, ``params``, ``image_params``, ``text_params``,
        ``shared_params``, ``{image,text}_latency_ms_b{B}`` (ms per item, median) with ``_iqr``
        and ``_range`` ([low, high]), ``image_latency_ms`` and ``text_latency_ms`` (largest
        batch), ``images_per_s``, ``captions_per_s`` and ``peak_memory_mb`` (MiB).

    Raises:
        DsmdError: a missing or unreadable checkpoint, data that cannot be loaded, a teacher
            that cannot be built, or bad arguments.
    """
    sizes = _check_arguments(batch_sizes, warmup, repeats)
    path = Path(checkpoint_path)
    state = load_checkpoint(path)
    cfg = checkpoint_config(state)
    device = resolve_device(device)
    data = load_split(cfg.data, split)

    def student() -> _Timed:
        model = student_from_state(state, str(path), device)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        row = {"name": f"{cfg.student.vision} + {cfg.student.text}", "dtype": dtype}
        return _Timed(
            model.encode_images,
            model.encode_captions,
            model.image_transform(train=False),
            torch.float32,
            {**row, **student_params(model)},
        )

    def teacher() -> _Timed:
        model = build_teacher(cfg.teacher, device)
        dtype = model.compute_dtype
        row = {"name": f"{model.kind} {model.name}", "dtype": str(dtype).removeprefix("torch.")}
        return _Timed(
            model.encode_images, model.encode_texts, model.image_transform, dtype, {**row, **teacher_params(model)}
        )

    largest = max(sizes)
    built = {"student": _build(student, data, device, largest)}
    state.clear()  # the weights and optimiser state read from the file: not needed any more
    notes = []
    if cfg.teacher.kind == "imported":
        notes.append(
            "the run's teacher is imported (features computed elsewhere): there is no teacher model to measure."
        )
    else:
        built["teacher"] = _build(teacher, data, device, largest)
    times = _time_together({name: (b[0], b[1]) for name, b in built.items()}, sizes, warmup, repeats)
    rows = {name: {**b[0].row, **times[name], "peak_memory_mb": b[2]} for name, b in built.items()}
    method = built["student"][3]
    student_row, teacher_row = rows["student"], rows.get("teacher")
    if teacher_row is not None:
        if teacher_row["image_params"] is None:
            notes.append(f"teacher kind {cfg.teacher.kind}: its parameters are not split into image and text parts.")
        if cfg.teacher.kind == "offline":
            notes.append(
                "the offline teacher's image tower maps into the text space through 1000 stored class-prompt "
                "embeddings (a buffer, not counted as parameters)."
            )
    if device.type == "cpu":
        notes.append("peak memory on the CPU is approximate: the growth of the process's peak resident set size.")
    return {
        "student": student_row,
        "teacher": teacher_row,
        "checkpoint": str(path),
        "device": str(device),
        "split": split,
        "images": data.num_images,
        "captions": len(data),
        "batch_sizes": list(sizes),
        "latency_batch": max(sizes),
        "warmup": warmup,
        "repeats": repeats,
        "timing": "interleaved: student and teacher in turn, each round",
        "torch_threads": torch.get_num_threads(),
        "memory_method": method,
        "notes": notes,
    }


def _count_text(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.1f}M" if n >= 10**6 else f"{n:,}"


def _num(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def _ratio(student, teacher) -> str:
    if student is None or teacher is None or not teacher:
        return "n/a"
    return f"{student / teacher:#.3g}"


def format_efficiency(result: dict) -> str:
    """A markdown table of :func:`measure_efficiency`'s result: one row per figure; columns
    teacher, student and student/teacher."""
    student, teacher = result["student"], result["teacher"] or {}
    rows = [
        ("parameters", "params", _count_text),
        ("image tower parameters", "image_params", _count_text),
        ("text tower parameters", "text_params", _count_text),
    ]
    for kind, unit in (("image", "image"), ("text", "caption")):
        for b in result["batch_sizes"]:
            rows.append((f"{unit} latency, batch {b} (ms per {unit})", f"{kind}_latency_ms_b{b}", None))
    rows += [
        (f"throughput, images/s (batch {result['latency_batch']})", "images_per_s", _num),
        (f"throughput, captions/s (batch {result['latency_batch']})", "captions_per_s", _num),
        ("peak memory (MiB)", "peak_memory_mb", _num),
    ]

    def cell(row: dict, key: str, fmt) -> str:
        if key not in row or row[key] is None:
            return "n/a"
        if fmt is None:  # a latency: median [first quartile - third quartile]
            low, high = row[f"{key}_iqr"]
            return f"{_num(row[key])} [{_num(low)}-{_num(high)}]"
        return fmt(row[key])

    lines = [
        f"Efficiency on {result['device']} ({result['torch_threads']} torch threads), split {result['split']} "
        f"({result['images']} images, {result['captions']} captions); latency: median over {result['repeats']} "
        f"timed runs after {result['warmup']} warm-up [inter-quartile range], student and teacher timed in turn; "
        f"peak memory: {result['memory_method']}",
        "",
        "| | teacher | student | student/teacher |",
        "|---|---:|---:|---:|",
    ]
    for label, key, fmt in rows:
        ratio = _ratio(student.get(key), teacher.get(key))
        lines.append(f"| {label} | {cell(teacher, key, fmt)} | {cell(student, key, fmt)} | {ratio} |")
    names = [f"student: {student['name']} ({student['dtype']})"]
    if result["teacher"]:
        names.append(f"teacher: {teacher['name']} ({teacher['dtype']})")
    lines += ["", *names, *(f"note: {n}" for n in result["notes"])]
    return "\n".join(lines)
