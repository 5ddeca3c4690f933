"""Models and data for benchmarks/gpu_check.py, made here with random weights (nothing is downloaded).

``size="paper"``: the paper's student (ViT-B/16 at 224 px + BERT-base, a 30,522-token WordPiece
vocabulary of made-up words), a BEiT-3 base retrieval model in the official checkpoint layout
(384 px) with a small sentencepiece vocabulary (the text embedding's size does not change the
cost), and a CLIP of ViT-L/14 size. ``size="tiny"``: the same shapes scaled down, for the CPU
dry run.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SIZES = {
    "paper": {
        "vit": dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            image_size=224,
            patch_size=16,
        ),
        "bert": dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            vocab_size=30522,
            max_position_embeddings=512,
        ),
        "clip_vision": dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            image_size=224,
            patch_size=14,
        ),
        "clip_text": dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            vocab_size=30522,
            max_position_embeddings=77,
        ),
        "beit3": dict(embed_dim=768, num_layers=12, num_heads=12, ffn_dim=3072, img_size=384, patch_size=16),
        "dim": 768,
        "clip_dim": 768,
    },
    "tiny": {
        "vit": dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        ),
        "bert": dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=300,
            max_position_embeddings=64,
        ),
        "clip_vision": dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        ),
        "clip_text": dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=300,
            max_position_embeddings=77,
        ),
        "beit3": dict(embed_dim=128, num_layers=2, num_heads=2, ffn_dim=96, img_size=32, patch_size=16),
        "dim": 32,
        "clip_dim": 24,
    },
}


def words(vocab_size: int) -> list[str]:
    """Made-up words filling a vocabulary of ``vocab_size`` (with the special tokens)."""
    return [f"w{i}" for i in range(vocab_size - len(SPECIALS))]


def save_wordpiece(folder: Path, vocab_size: int, eos_is_sep: bool = False) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + words(vocab_size))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    extra = {"eos_token": "[SEP]", "bos_token": "[CLS]"} if eos_is_sep else {}
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        **extra,
    ).save_pretrained(folder)


def student_towers(root: Path, size: str) -> tuple[str, str]:
    """Folders of a random ViT (config + preprocessing) and a random BERT (config + tokenizer)."""
    from transformers import BertConfig, ViTConfig

    s = SIZES[size]
    vit, bert = root / f"vit_{size}", root / f"bert_{size}"
    if not (vit / "config.json").is_file():
        vit.mkdir(parents=True, exist_ok=True)
        ViTConfig(**s["vit"]).save_pretrained(vit)
        (vit / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    if not (bert / "config.json").is_file():
        bert.mkdir(parents=True, exist_ok=True)
        BertConfig(**s["bert"]).save_pretrained(bert)
        save_wordpiece(bert, s["bert"]["vocab_size"])
    return str(vit), str(bert)


def clip_teacher(root: Path, size: str) -> str:
    """A random CLIP (ViT-L/14 size for ``paper``) saved with a tokenizer and its processor config."""
    from transformers import CLIPConfig, CLIPModel

    s, folder = SIZES[size], root / f"clip_{size}"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        text = dict(s["clip_text"], eos_token_id=3, bos_token_id=2, pad_token_id=0)
        CLIPModel(
            CLIPConfig(text_config=text, vision_config=s["clip_vision"], projection_dim=s["clip_dim"])
        ).save_pretrained(folder)
        save_wordpiece(folder, s["clip_text"]["vocab_size"], eos_is_sep=True)
        side = s["clip_vision"]["image_size"]
        (folder / "preprocessor_config.json").write_text(
            json.dumps(
                {
                    "crop_size": {"height": side, "width": side},
                    "do_center_crop": True,
                    "do_normalize": True,
                    "do_rescale": True,
                    "do_resize": True,
                    "image_mean": [0.48145466, 0.4578275, 0.40821073],
                    "image_std": [0.26862954, 0.26130258, 0.27577711],
                    "image_processor_type": "CLIPImageProcessor",
                    "resample": 3,
                    "rescale_factor": 1 / 255,
                    "size": {"shortest_edge": side},
                }
            )
        )
    return str(folder)


def beit3_teacher(root: Path, size: str) -> tuple[str, str]:
    """A random BEiT-3 retrieval checkpoint in the official layout and a sentencepiece model."""
    import sentencepiece

    from dsmd.teachers.beit3 import BEiT3Config, BEiT3ForRetrieval

    folder = root / f"beit3_{size}"
    checkpoint, spm = folder / "beit3_retrieval.pth", folder / "beit3.spm"
    if not checkpoint.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        rng = random.Random(0)
        vocab = "a photo of the red blue dog cat kangaroo on grass two children play sea man woman horse".split()
        sentences = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 12))) + "." for _ in range(500)]
        model_bytes = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model_bytes,
            vocab_size=40,
            model_type="unigram",
            character_coverage=1.0,
            num_threads=1,
            minloglevel=2,
        )
        spm.write_bytes(model_bytes.getvalue())
        torch.manual_seed(0)
        config = BEiT3Config(vocab_size=64, max_source_positions=64, **SIZES[size]["beit3"])
        torch.save({"model": BEiT3ForRetrieval(config).state_dict()}, checkpoint)
    return str(checkpoint), str(spm)


def captions(count: int, vocab_size: int, length: int = 30, seed: int = 0) -> list[str]:
    """``count`` captions of ``length`` made-up words (so they tokenise to ``length + 2`` tokens)."""
    rng = random.Random(seed)
    pool = words(vocab_size)
    return [" ".join(rng.choice(pool) for _ in range(length)) for _ in range(count)]


def jpeg_dataset(folder: Path, count: int, side: int, vocab_size: int, captions_per_image: int = 5) -> Path:
    """``count`` random JPEGs (``side`` px, photo-like noise) and a JSONL manifest, 5 captions each."""
    manifest = folder / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    texts = captions(count * captions_per_image, vocab_size, length=12)
    lines = []
    for i in range(count):
        small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side + 32, side), Image.Resampling.BICUBIC).save(
            folder / f"{i:06d}.jpg", quality=90
        )
        lines.append(
            json.dumps(
                {"image": f"{i:06d}.jpg", "captions": texts[i * captions_per_image : (i + 1) * captions_per_image]}
            )
        )
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
