"""The BEiT-3 teacher: official checkpoint keys, features against a slow reference written from
the state-dict tensors, the XLM-R tokenizer over sentencepiece, and the error paths."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dsmd.config import TeacherConfig
from dsmd.errors import DsmdError
from dsmd.teachers import BEiT3Teacher, Teacher, available_teachers, build_teacher
from dsmd.teachers.beit3 import BEiT3Config, BEiT3ForRetrieval, BEiT3Tokenizer
from dsmd.teachers.beit3.checkpoint import config_from_state_dict

CAPTIONS = [
    "A red dog on the grass.",
    "Two children play football on a sunny beach near the sea",
    "xyz, zebra!",  # characters the tokenizer never saw: <unk>
    "horse",
]


@pytest.fixture(scope="module")
def teacher(beit3_files) -> BEiT3Teacher:
    cfg = TeacherConfig(kind="beit3", name_or_path=str(beit3_files.checkpoint))
    built = build_teacher(cfg, "cpu")
    assert isinstance(built, BEiT3Teacher)
    return built


def _reference_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().double() for k, v in model.state_dict().items()}


# -- an independent, slow reference: BEiT-3's forward pass written out token by token ----------


def _layer_norm(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    return (x - mean) / torch.sqrt(var + 1e-5) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _linear(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    out = sd[f"{name}.weight"] @ x
    return out + sd[f"{name}.bias"] if f"{name}.bias" in sd else out


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _reference_cls(sd: dict, tokens: list[torch.Tensor], way: str, heads: int) -> torch.Tensor:
    """The final CLS state of one sequence (no padding), every op on ``(D,)`` vectors.

    ``way`` is the multiway branch: ``A`` for images, ``B`` for texts. Positions start at 2.
    """
    positions = sd[f"beit3.encoder.embed_positions.{way}.weight"]
    xs = [token + positions[i + 2] for i, token in enumerate(tokens)]
    n, dim = len(xs), xs[0].shape[0]
    head_dim = dim // heads
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("beit3.encoder.layers."))
    for layer in range(layers):
        p = f"beit3.encoder.layers.{layer}"
        h = [_layer_norm(sd, f"{p}.self_attn_layer_norm.{way}", x) for x in xs]
        q = [_linear(sd, f"{p}.self_attn.q_proj.{way}", t) for t in h]
        k = [_linear(sd, f"{p}.self_attn.k_proj.{way}", t) for t in h]
        v = [_linear(sd, f"{p}.self_attn.v_proj.{way}", t) for t in h]
        attended = []
        for i in range(n):
            per_head = []
            for head in range(heads):
                s = slice(head * head_dim, (head + 1) * head_dim)
                scores = [float(q[i][s] @ k[j][s]) / math.sqrt(head_dim) for j in range(n)]
                top = max(scores)
                weights = [math.exp(score - top) for score in scores]
                total = sum(weights)
                per_head.append(sum(w / total * v[j][s] for j, w in enumerate(weights)))
            a = _layer_norm(sd, f"{p}.self_attn.inner_attn_ln.{way}", torch.cat(per_head))
            attended.append(_linear(sd, f"{p}.self_attn.out_proj.{way}", a))
        xs = [x + a for x, a in zip(xs, attended, strict=True)]
        out = []
        for x in xs:
            t = _layer_norm(sd, f"{p}.final_layer_norm.{way}", x)
            t = _gelu(_linear(sd, f"{p}.ffn.{way}.fc1", t))
            t = _layer_norm(sd, f"{p}.ffn.{way}.ffn_layernorm", t)
            out.append(x + _linear(sd, f"{p}.ffn.{way}.fc2", t))
        xs = out
    return _layer_norm(sd, f"beit3.encoder.layer_norm.{way}", xs[0])


def reference_image_features(sd: dict, image: torch.Tensor, heads: int) -> torch.Tensor:
    """``(3, S, S)`` -> ``(D,)``: patches by explicit slicing, CLS first, branch A."""
    weight, bias = sd["beit3.vision_embed.proj.weight"], sd["beit3.vision_embed.proj.bias"]
    patch = weight.shape[-1]
    grid = image.shape[-1] // patch
    tokens = [sd["beit3.vision_embed.cls_token"].reshape(-1)]
    for row in range(grid):
        for col in range(grid):
            pixels = image[:, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch]
            tokens.append((weight * pixels.double()).sum(dim=(1, 2, 3)) + bias)
    return sd["vision_head.weight"] @ _reference_cls(sd, tokens, "A", heads)


def reference_text_features(sd: dict, ids: list[int], heads: int) -> torch.Tensor:
    """Token ids (``<s>`` ... ``</s>``, unpadded) -> ``(D,)`` through branch B."""
    tokens = [sd["beit3.text_embed.weight"][i] for i in ids]
    return sd["language_head.weight"] @ _reference_cls(sd, tokens, "B", heads)


def reference_ids(spm: Path, text: str, max_length: int = 64) -> list[int]:
    """XLM-R ids straight from sentencepiece: fairseq's specials, pieces shifted by one."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm))
    pieces = [sp.piece_to_id(piece) for piece in sp.encode(text, out_type=str)]
    return [0, *[i + 1 if i else 3 for i in pieces][: max_length - 2], 2]


# -- the official checkpoint layout ------------------------------------------------------------


def official_keys(layers: int) -> set[str]:
    """BEiT3ForRetrieval's state-dict keys, from unilm modeling_finetune.py / torchscale 0.2.0."""
    keys = {
        "logit_scale",
        "vision_head.weight",
        "language_head.weight",
        "beit3.text_embed.weight",
        "beit3.vision_embed.proj.weight",
        "beit3.vision_embed.proj.bias",
        "beit3.vision_embed.cls_token",
        "beit3.vision_embed.mask_token",
    }
    for way in "AB":
        keys.add(f"beit3.encoder.embed_positions.{way}.weight")
        modules = [f"beit3.encoder.layer_norm.{way}"]
        for n in range(layers):
            layer = f"beit3.encoder.layers.{n}"
            modules += [f"{layer}.self_attn.{proj}.{way}" for proj in ("k_proj", "v_proj", "q_proj")]
            modules += [
                f"{layer}.self_attn.out_proj.{way}",
                f"{layer}.self_attn.inner_attn_ln.{way}",
                f"{layer}.self_attn_layer_norm.{way}",
                f"{layer}.ffn.{way}.fc1",
                f"{layer}.ffn.{way}.fc2",
                f"{layer}.ffn.{way}.ffn_layernorm",
                f"{layer}.final_layer_norm.{way}",
            ]
        keys |= {f"{module}.{p}" for module in modules for p in ("weight", "bias")}
    return keys


def _meta_state_dict(config: BEiT3Config) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return BEiT3ForRetrieval(config).state_dict()


def test_base_keys_and_shapes_match_the_official_checkpoints() -> None:
    sd = _meta_state_dict(BEiT3Config.base())
    assert set(sd) == official_keys(12) and len(sd) == 494
    shapes = {
        "beit3.text_embed.weight": (64010, 768),
        "beit3.vision_embed.proj.weight": (768, 3, 16, 16),
        "beit3.vision_embed.cls_token": (1, 1, 768),
        "beit3.encoder.embed_positions.A.weight": (24 * 24 + 1 + 2, 768),
        "beit3.encoder.embed_positions.B.weight": (1024, 768),
        "beit3.encoder.layers.11.ffn.B.fc1.weight": (3072, 768),
        "beit3.encoder.layers.0.ffn.A.ffn_layernorm.weight": (3072,),
        "beit3.encoder.layers.0.self_attn.inner_attn_ln.B.weight": (768,),
        "vision_head.weight": (768, 768),
        "logit_scale": (),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    # 222M parameters: the BEiT-3 base of the paper.
    assert sum(t.numel() for t in sd.values()) == 222_458_881


def test_the_architecture_is_read_from_the_shapes() -> None:
    for config in (BEiT3Config.base(), BEiT3Config.large(), BEiT3Config.base(img_size=224)):
        assert config_from_state_dict(_meta_state_dict(config), "x.pth") == config
    large = BEiT3Config.large()
    assert (large.embed_dim, large.num_layers, large.num_heads) == (1024, 24, 16)
    assert large.ffn_dim == 4096 and large.vocab_size == 64010 and large.img_size == 384
    assert set(_meta_state_dict(large)) == official_keys(24)


# -- features ----------------------------------------------------------------------------------


def test_features_equal_the_model_that_wrote_the_checkpoint(beit3_files, teacher: BEiT3Teacher) -> None:
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 32, 32)
    ids, mask = teacher.tokenizer(CAPTIONS, 64)
    with torch.no_grad():
        expected_images = beit3_files.model.image_features(pixels)
        expected_texts = beit3_files.model.text_features(ids, mask)
    images = teacher.encode_images(pixels)
    texts = teacher.encode_texts(CAPTIONS)
    assert teacher.dim == 128 and images.shape == (3, 128) and texts.shape == (4, 128)
    assert images.dtype == texts.dtype == torch.float32
    torch.testing.assert_close(images, expected_images)
    torch.testing.assert_close(texts, expected_texts)
    assert not torch.allclose(texts.norm(dim=-1), torch.ones(4))  # raw: the caller normalises


def test_features_match_a_slow_reference_written_from_the_tensors(beit3_files, teacher: BEiT3Teacher) -> None:
    sd = _reference_state(beit3_files.model)
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32)
    images = teacher.encode_images(pixels).double()
    for b in range(2):
        expected = reference_image_features(sd, pixels[b], heads=2)
        torch.testing.assert_close(images[b], expected, atol=1e-4, rtol=1e-4)
    # One batch, padded to its longest caption; the reference sees each caption alone.
    texts = teacher.encode_texts(CAPTIONS).double()
    for b, caption in enumerate(CAPTIONS):
        expected = reference_text_features(sd, reference_ids(beit3_files.tokenizer, caption), 2)
        torch.testing.assert_close(texts[b], expected, atol=1e-4, rtol=1e-4)


def test_a_real_image_goes_through_the_beit3_preprocessing(teacher: BEiT3Teacher) -> None:
    transform = teacher.image_transform
    assert (transform.size, transform.resample, transform.crop) == (32, "bicubic", False)
    assert transform.mean == (0.5, 0.5, 0.5) and transform.std == (0.5, 0.5, 0.5)
    gradient = np.linspace(0, 255, 60 * 40 * 3).reshape(40, 60, 3).astype(np.uint8)
    image = Image.fromarray(gradient)  # not square: squashed to 32 x 32, not cropped
    pixels = transform(image)
    expected = np.asarray(image.resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float32)
    torch.testing.assert_close(pixels, torch.from_numpy(expected / 127.5 - 1).permute(2, 0, 1))
    assert teacher.encode_images(pixels[None]).shape == (1, 128)
    with pytest.raises(ValueError, match="32x32"):
        teacher.encode_images(torch.zeros(1, 3, 48, 48))


# -- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_builds_beit3_input_ids(beit3_files) -> None:
    import sentencepiece

    tokenizer = BEiT3Tokenizer(beit3_files.tokenizer)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(beit3_files.tokenizer))
    assert tokenizer.vocab_size == sp.get_piece_size() + 2 == 62  # + <pad> and <mask>
    ids = tokenizer.tokenize("A red dog on the grass.")
    assert len(ids) > 3 and all(4 <= i < 61 for i in ids)  # real pieces, none unknown
    assert [sp.id_to_piece(i - 1) for i in ids] == sp.encode("A red dog on the grass.", out_type=str)
    assert 3 in tokenizer.tokenize("xyz")  # unknown characters -> <unk> = 3
    # Special tokens written in a caption stay whole, as in the slow XLMRobertaTokenizer;
    # <mask> (id 61, the last) swallows the spaces before it.
    assert tokenizer.tokenize("horse  <mask> <s> end") == [
        *tokenizer.tokenize("horse"),
        61,
        0,
        *tokenizer.tokenize(" end"),
    ]

    input_ids, padding_mask = tokenizer(["A red dog", "horse", "dog " * 40], max_length=10)
    assert input_ids.shape == padding_mask.shape == (3, 10)
    assert input_ids.dtype == torch.long and padding_mask.dtype == torch.bool
    assert (input_ids[:, 0] == 0).all()  # <s>
    for row, text in enumerate(["A red dog", "horse", "dog " * 40]):
        expected = reference_ids(beit3_files.tokenizer, text, max_length=10)
        n = len(expected)
        assert input_ids[row, :n].tolist() == expected and expected[-1] == 2  # </s>
        assert (input_ids[row, n:] == 1).all()  # <pad>
        assert padding_mask[row].tolist() == [False] * n + [True] * (10 - n)
    assert padding_mask[2].sum() == 0  # truncated to exactly max_length, </s> kept


def test_long_captions_are_truncated_to_max_text_length(beit3_files) -> None:
    short = BEiT3Teacher(beit3_files.checkpoint, max_text_length=8)
    caption = "two children play football on a sunny beach near the sea with a red dog"
    ids = reference_ids(beit3_files.tokenizer, caption, max_length=8)
    assert len(ids) == 8
    expected = reference_text_features(_reference_state(beit3_files.model), ids, heads=2)
    got = short.encode_texts([caption, "dog"])[0].double()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert short.identity()["preprocessing"]["max_length"] == 8


# -- loading -----------------------------------------------------------------------------------


def test_accepts_the_three_checkpoint_layouts(beit3_files, teacher: BEiT3Teacher, tmp_path: Path) -> None:
    state_dict = beit3_files.model.state_dict()
    pixels = torch.randn(1, 3, 32, 32)
    for name, content in (("bare.pth", state_dict), ("module.pth", {"module": state_dict})):
        torch.save(content, tmp_path / name)
        other = BEiT3Teacher(tmp_path / name, tokenizer=beit3_files.tokenizer)
        assert other.weights_sha256() == teacher.weights_sha256()
        torch.testing.assert_close(other.encode_images(pixels), teacher.encode_images(pixels))
    # unilm's training script stores its argparse arguments beside the weights.
    torch.save({"model": state_dict, "args": argparse.Namespace(lr=1e-3)}, tmp_path / "args.pth")
    with_args = BEiT3Teacher(tmp_path / "args.pth", tokenizer=beit3_files.tokenizer)
    assert with_args.weights_sha256() == teacher.weights_sha256()
    # The unused mask token and logit scale may be absent.
    slim = {k: v for k, v in state_dict.items() if k not in ("logit_scale", "beit3.vision_embed.mask_token")}
    torch.save({"model": slim}, tmp_path / "slim.pth")
    slim_teacher = BEiT3Teacher(tmp_path / "slim.pth", tokenizer=beit3_files.tokenizer)
    torch.testing.assert_close(slim_teacher.encode_texts(CAPTIONS), teacher.encode_texts(CAPTIONS))


def test_image_size_override_resizes_the_position_table(beit3_files, teacher: BEiT3Teacher) -> None:
    same = BEiT3Teacher(beit3_files.checkpoint, image_size=32)
    assert same.weights_sha256() == teacher.weights_sha256()
    bigger = build_teacher(TeacherConfig(kind="beit3", name_or_path=str(beit3_files.checkpoint), image_size=48), "cpu")
    assert bigger.image_transform.size == 48 and bigger.config.img_size == 48
    table = bigger.model.beit3.encoder.embed_positions.A.weight
    original = beit3_files.model.beit3.encoder.embed_positions.A.weight
    assert table.shape == (3 * 3 + 3, 128)
    assert torch.equal(table[:3], original[:3])  # CLS and the two offset rows are kept
    pixels = torch.randn(1, 3, 48, 48)
    expected = reference_image_features(_reference_state(bigger.model), pixels[0], heads=2)
    torch.testing.assert_close(bigger.encode_images(pixels)[0].double(), expected, atol=1e-4, rtol=1e-4)
    assert bigger.identity()["weights_sha256"] != teacher.identity()["weights_sha256"]


def test_identity_frozen_and_half_precision(beit3_files, teacher: BEiT3Teacher) -> None:
    identity = teacher.identity()
    assert json.loads(json.dumps(identity)) == identity
    assert identity["kind"] == "beit3" and identity["dim"] == 128
    assert identity["architecture"]["num_layers"] == 2 and identity["architecture"]["vocab_size"] == 70
    # 64 tokens by default, fewer where the position table is shorter (22 here).
    assert identity["preprocessing"]["max_length"] == 22
    assert BEiT3Tokenizer(beit3_files.tokenizer).sha256 in identity["preprocessing"]["tokenizer"]
    assert identity["num_parameters"] == teacher.num_parameters() > 0
    assert BEiT3Teacher(beit3_files.checkpoint).identity() == identity

    teacher.train()
    assert not teacher.training and not teacher.model.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert teacher.encode_texts([]).shape == (0, 128)

    half = BEiT3Teacher(beit3_files.checkpoint, dtype="bfloat16")
    assert half.compute_dtype == torch.bfloat16 and half.identity()["dtype"] == "bfloat16"
    assert half.weights_sha256() == teacher.weights_sha256()
    pixels = torch.randn(2, 3, 32, 32)
    for got, want in (
        (half.encode_images(pixels), teacher.encode_images(pixels)),
        (half.encode_texts(CAPTIONS), teacher.encode_texts(CAPTIONS)),
    ):
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        assert F.cosine_similarity(got, want).min() > 0.98


def test_registry_knows_beit3(teacher: BEiT3Teacher) -> None:
    assert "beit3" in available_teachers()
    assert isinstance(teacher, Teacher) and teacher.device == torch.device("cpu")


# -- errors ------------------------------------------------------------------------------------


def test_checkpoint_errors_name_the_file_and_the_fix(beit3_files, tmp_path: Path) -> None:
    with pytest.raises(DsmdError, match="'teacher.name_or_path': teacher.kind=beit3 needs it"):
        TeacherConfig(kind="beit3")
    missing = tmp_path / "beit3_base_patch16_384_coco_retrieval.pth"
    with pytest.raises(DsmdError, match=r"checkpoint not found: .*coco_retrieval\.pth.*name_or_path"):
        BEiT3Teacher(missing)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DsmdError, match=r"cannot read .*garbage\.pth.*_retrieval\.pth") as error:
        BEiT3Teacher(garbage)
    assert "\n" not in str(error.value) and len(str(error.value)) < 500

    clip = tmp_path / "clip.pth"
    torch.save(
        {
            "visual.conv1.weight": torch.zeros(8, 3, 4, 4),
            "token_embedding.weight": torch.zeros(9, 8),
            "logit_scale": torch.zeros(()),
        },
        clip,
    )
    with pytest.raises(DsmdError, match=r"clip\.pth is not a BEiT-3 checkpoint.*token_embedding.*_retrieval\.pth"):
        BEiT3Teacher(clip)

    state_dict = beit3_files.model.state_dict()
    pretraining = tmp_path / "beit3_base_patch16_224.pth"
    torch.save({"model": {k: v for k, v in state_dict.items() if "_head" not in k}}, pretraining)
    with pytest.raises(
        DsmdError,
        match=r"224\.pth is a BEiT-3 checkpoint without the retrieval heads .*vision_head",
    ):
        BEiT3Teacher(pretraining)

    pickled = tmp_path / "pickled.pth"
    torch.save({"model": state_dict, "root": PurePosixPath("/data")}, pickled)
    with pytest.raises(DsmdError, match=r"pickled\.pth holds Python objects .*weights_only=False"):
        BEiT3Teacher(pickled)

    broken = tmp_path / "broken.pth"
    torch.save({"model": {k: v for k, v in state_dict.items() if "layers.1.ffn.B.fc2" not in k}}, broken)
    with pytest.raises(
        DsmdError,
        match=r"broken\.pth does not match .*missing beit3\.encoder\.layers\.1\.ffn\.B\.fc2",
    ):
        BEiT3Teacher(broken, tokenizer=beit3_files.tokenizer)


def test_tokenizer_errors(beit3_files, train_spm, tmp_path: Path) -> None:
    alone = tmp_path / "alone.pth"
    alone.write_bytes(beit3_files.checkpoint.read_bytes())
    with pytest.raises(DsmdError, match=r"no beit3\.spm next to .*alone\.pth.*teacher\.tokenizer"):
        BEiT3Teacher(alone)
    with pytest.raises(DsmdError, match=r"tokenizer not found: .*nowhere\.spm.*teacher\.tokenizer"):
        BEiT3Teacher(alone, tokenizer=tmp_path / "nowhere.spm")
    not_spm = tmp_path / "vocab.txt"
    not_spm.write_text("[PAD]\n[UNK]\n")
    with pytest.raises(DsmdError, match=r"vocab\.txt is not a sentencepiece model"):
        BEiT3Teacher(alone, tokenizer=not_spm)
    other = train_spm(tmp_path / "other.spm", vocab_size=80)
    with pytest.raises(DsmdError, match=r"other\.spm has 82 token ids but checkpoint .*alone\.pth embeds 70"):
        BEiT3Teacher(alone, tokenizer=other)


def test_bad_sizes_are_user_errors(beit3_files) -> None:
    with pytest.raises(DsmdError, match="multiple of the patch size 16"):
        BEiT3Teacher(beit3_files.checkpoint, image_size=40)
    with pytest.raises(DsmdError, match=r"max_text_length must be in 2\.\.22"):
        BEiT3Teacher(beit3_files.checkpoint, max_text_length=23)
    assert BEiT3Teacher(beit3_files.checkpoint, max_text_length=22).max_length == 22
