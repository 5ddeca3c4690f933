"""Shared fixtures: a generated captioned dataset and tiny random models saved as folders.

The end-to-end tests run the real pipeline (transformers loading, feature store, training
loop, CLI) on these in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    PreTrainedTokenizerFast,
    ViTConfig,
    ViTModel,
)

from beit3_fixtures import beit3_files, train_spm  # noqa: F401  (fixtures for every folder)
from dsmd.data.synthetic import COLOURS, SHAPES, write_synthetic_dataset
from tiny_runs import tiny_run_overrides

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
WORDS = sorted(
    {
        *COLOURS,
        *SHAPES,
        "a",
        "on",
        "background",
        "picture",
        "with",
        ",",
        "backdrop",
        "the",
        "is",
        "and",
        "drawing",
        "of",
    }
)


def save_tokenizer(folder: Path) -> None:
    """A WordPiece tokenizer over the synthetic captions' words, saved as a transformers folder."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    ).save_pretrained(folder)


def _text_kwargs(layers: int) -> dict:
    return dict(
        vocab_size=len(SPECIALS) + len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=32,
    )


def _vision_kwargs() -> dict:
    return dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Folders: ``clip`` (a teacher with its processor config), ``vit`` and ``bert`` (student towers)."""
    root = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    clip = root / "clip"
    CLIPModel(
        CLIPConfig(
            text_config=dict(_text_kwargs(2), eos_token_id=3, bos_token_id=2, pad_token_id=0),
            vision_config=_vision_kwargs(),
            projection_dim=24,
        )
    ).save_pretrained(clip)
    save_tokenizer(clip)
    (clip / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": {"height": 32, "width": 32},
                "do_center_crop": True,
                "do_normalize": True,
                "do_rescale": True,
                "do_resize": True,
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
                "image_processor_type": "CLIPImageProcessor",
                "resample": 3,
                "rescale_factor": 1 / 255,
                "size": {"shortest_edge": 32},
            }
        )
    )
    vit = root / "vit"
    ViTModel(ViTConfig(**_vision_kwargs()), add_pooling_layer=False).save_pretrained(vit)
    (vit / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    bert = root / "bert"
    BertModel(BertConfig(**_text_kwargs(2)), add_pooling_layer=False).save_pretrained(bert)
    save_tokenizer(bert)
    return {"clip": str(clip), "vit": str(vit), "bert": str(bert)}


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory) -> str:
    """24 generated 32 px images with 2 captions each."""
    return str(
        write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_images=24, captions_per_image=2, size=32)
    )


@pytest.fixture
def tiny_overrides(tiny_models, synthetic_manifest, tmp_path) -> list[str]:
    """``key=value`` overrides for a whole run on tiny models, writing under ``tmp_path``."""
    return tiny_run_overrides(tiny_models, synthetic_manifest, tmp_path)
