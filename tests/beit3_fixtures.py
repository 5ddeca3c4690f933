"""Fixtures: a tiny BEiT-3 retrieval checkpoint in the official layout and its tokenizer.

``tests/conftest.py`` imports the fixtures (``beit3_files``, ``train_spm``) so that every test
folder can use them; tests reach the helpers through the fixtures, not imports.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from dsmd.teachers.beit3 import BEiT3Config, BEiT3ForRetrieval

BEIT3_WORDS = (
    "a photo of the red blue dog cat kangaroo on grass two children play football sunny beach "
    "near sea man woman riding horse"
).split()
# Width 128 with BEiT-3's 64-dimensional heads: 2 heads (the checkpoint loader infers the head
# count from the width). 32 px images of 16 px patches: 4 patches and the CLS token.
TINY_BEIT3 = BEiT3Config(
    embed_dim=128,
    num_layers=2,
    num_heads=2,
    ffn_dim=96,
    vocab_size=70,  # the tokenizer's 62 ids, padded as the released checkpoints pad theirs
    img_size=32,
    patch_size=16,
    max_source_positions=24,
)


def train_sentencepiece(path: Path, vocab_size: int, seed: int = 0) -> Path:
    """A unigram sentencepiece model over generated captions, written to ``path``."""
    import sentencepiece

    rng = random.Random(seed)
    sentences = [
        " ".join(rng.choice(BEIT3_WORDS) for _ in range(rng.randint(3, 12))).capitalize() + "." for _ in range(500)
    ]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return path


def random_beit3(config: BEiT3Config, seed: int = 0) -> BEiT3ForRetrieval:
    """A BEiT-3 whose every weight is random, layer norms included (so their placement shows)."""
    torch.manual_seed(seed)
    model = BEiT3ForRetrieval(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.1)
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.add_(1.0)
        for embedding in (model.beit3.text_embed, *model.beit3.encoder.embed_positions.children()):
            embedding.weight.mul_(5.0)
    return model.eval()


@dataclass
class Beit3Files:
    """A checkpoint in the official layout, ``beit3.spm`` beside it, the model that wrote it."""

    checkpoint: Path
    tokenizer: Path
    model: BEiT3ForRetrieval
    config: BEiT3Config


@pytest.fixture(scope="session")
def beit3_files(tmp_path_factory: pytest.TempPathFactory) -> Beit3Files:
    """``beit3_tiny_retrieval.pth`` (official layout) with ``beit3.spm`` beside it."""
    folder = tmp_path_factory.mktemp("beit3")
    tokenizer = train_sentencepiece(folder / "beit3.spm", vocab_size=60)
    model = random_beit3(TINY_BEIT3)
    checkpoint = folder / "beit3_tiny_retrieval.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    return Beit3Files(checkpoint=checkpoint, tokenizer=tokenizer, model=model, config=TINY_BEIT3)


@pytest.fixture(scope="session")
def train_spm():
    """``train_spm(path, vocab_size)``: a tiny sentencepiece model written to ``path``."""
    return train_sentencepiece
