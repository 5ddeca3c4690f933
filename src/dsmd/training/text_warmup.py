"""The text warm-up (``train.text_warmup_epochs``): before distillation, the text tower alone
learns the teacher's features of a caption pool and of the training captions.

A compact text tower (a bag of factorised word embeddings) starts from the truncated SVD of its
teacher's word embeddings, which is not the teacher's sentence space; distillation then moves
only the rows of the words its pairs show. The warm-up fits every word the caption pool holds
(for example "a photo of a {word}." for the vocabulary's words) to the teacher's features of
those captions, minimising ``1 - cos(student(c), teacher(c))``, so that words the pairs never
show start in the teacher's space. It runs once, when a run starts fresh; a resumed run has its
result in the checkpoint's weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dsmd.models import DualEncoder

BATCH = 256  # captions per warm-up step


def text_parameters(student: DualEncoder) -> list[torch.nn.Parameter]:
    """The text tower's and ``text_proj``'s trainable parameters: what the warm-up changes."""
    return [p for module in (student.text, student.text_proj) for p in module.parameters() if p.requires_grad]


def mean_cosine_distance(student: DualEncoder, captions: Sequence[str], targets: torch.Tensor) -> float:
    """``mean_c 1 - cos(student(c), targets[c])`` over ``captions`` (``targets`` ``(N, D)``), in eval mode."""
    was_training = student.training
    student.eval()
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(captions), BATCH):
            feats = student.encode_captions(captions[start : start + BATCH]).float().cpu()
            total += float((1 - F.cosine_similarity(feats, targets[start : start + BATCH].float(), dim=-1)).sum())
    student.train(was_training)
    return total / max(len(captions), 1)


def warm_up_text(
    student: DualEncoder,
    captions: Sequence[str],
    targets: torch.Tensor,
    epochs: int,
    lr: float,
    seed: int,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Train ``student``'s text side alone on ``captions`` toward ``targets`` ``(N, D)`` (the teacher's).

    Returns:
        ``{"captions", "epochs", "before", "after", "seconds"}``: ``before`` and ``after`` are the
        mean ``1 - cos`` to the targets.
    """
    t0 = time.perf_counter()
    captions = list(captions)
    targets = targets.float()
    before = mean_cosine_distance(student, captions, targets)
    device = student.text_proj.weight.device
    optimizer = torch.optim.Adam(text_parameters(student), lr=lr)
    tokenize = student.caption_tokenizer()
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(captions) // BATCH)
    student.train()
    with tqdm(total=steps, desc="text warm-up", disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(captions), generator=generator)
            for start in range(0, len(captions), BATCH):
                rows = order[start : start + BATCH]
                tokens = tokenize([captions[i] for i in rows.tolist()])
                feats = student.encode_texts(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
                loss = (1 - F.cosine_similarity(feats.float(), targets[rows].to(device), dim=-1)).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update()
    after = mean_cosine_distance(student, captions, targets)
    seconds = time.perf_counter() - t0
    log(
        f"text warm-up: {len(captions)} captions, {epochs} epochs, 1 - cos to the teacher "
        f"{before:.3f} -> {after:.3f} ({seconds:.1f} s)"
    )
    return {"captions": len(captions), "epochs": epochs, "before": before, "after": after, "seconds": seconds}
