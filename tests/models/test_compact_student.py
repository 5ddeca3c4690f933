"""The compact student's building blocks: factorised word embeddings, fewer positions, a factorised
ImageNet head; their SVD initialisation, parameter counts, blueprints and errors."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from torch import nn

from dsmd.config import StudentConfig, config_to_dict, load_config
from dsmd.errors import DsmdError
from dsmd.models import build_student
from dsmd.models.blueprint import student_blueprint, student_from_blueprint
from dsmd.models.low_rank import LowRankEmbedding, LowRankLinear
from dsmd.models.text import build_text_tower
from dsmd.models.text_compact import factorize_word_embeddings
from dsmd.models.vision import EfficientNetLite0Tower
from dsmd.sweeps.spec import run_hash
from dsmd.training.checkpoint import load_weights

CAPTIONS = ["a red circle on a blue background", "the green square", "a yellow triangle"]


def _truncated_svd(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------- the factorisations


def test_low_rank_embedding_is_the_truncated_svd():
    torch.manual_seed(0)
    table = nn.Embedding(50, 12, padding_idx=0)
    for rank in (3, 12):
        low = LowRankEmbedding.from_embedding(table, rank)
        assert low.table.weight.shape == (50, rank) and low.up.weight.shape == (12, rank)
        assert low.table.padding_idx == 0
        product = low.table.weight.double() @ low.up.weight.double().T  # (V, H)
        torch.testing.assert_close(product, _truncated_svd(table.weight.detach(), rank), atol=1e-5, rtol=0)
        # the map out of the bottleneck is orthonormal; the small table holds the coordinates
        torch.testing.assert_close(low.up.weight.T @ low.up.weight, torch.eye(rank), atol=1e-5, rtol=0)
    ids = torch.tensor([[0, 5, 49], [7, 7, 1]])
    torch.testing.assert_close(low(ids), table(ids), atol=1e-5, rtol=0)  # full rank: the table itself


def test_low_rank_linear_is_the_truncated_svd_and_keeps_the_bias():
    torch.manual_seed(0)
    linear = nn.Linear(20, 15)
    x = torch.randn(4, 20)
    low = LowRankLinear.from_linear(linear, 5)
    assert (low.down.bias, low.down.weight.shape, low.up.weight.shape) == (None, (5, 20), (15, 5))
    torch.testing.assert_close(low.up.bias, linear.bias)
    expected = x.double() @ _truncated_svd(linear.weight.detach(), 5).T + linear.bias.double()
    torch.testing.assert_close(low(x).double(), expected, atol=1e-5, rtol=0)
    full = LowRankLinear.from_linear(linear, 15)
    torch.testing.assert_close(full(x), linear(x), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------- text tower


def test_tiny_text_tower_at_full_rank_and_fewer_positions_is_the_same_model(tiny_models):
    whole = build_text_tower(tiny_models["bert"]).eval()
    vocab, width = whole.model.get_input_embeddings().weight.shape
    full_rank = min(vocab, width)
    compact = build_text_tower(tiny_models["bert"], positions=16, embedding_rank=full_rank).eval()
    assert compact.embedding_rank == full_rank and whole.embedding_rank is None
    assert compact.max_positions == compact.model.config.max_position_embeddings == 16
    assert compact.model.embeddings.position_embeddings.weight.shape == (16, width)
    assert compact.model.embeddings.position_ids.shape == compact.model.embeddings.token_type_ids.shape == (1, 16)
    batch = whole.tokenize(CAPTIONS, max_length=16)
    with torch.no_grad():
        torch.testing.assert_close(compact(**batch), whole(**batch), atol=1e-5, rtol=1e-4)
    saved = vocab * width - (vocab * full_rank + full_rank * width) + (32 - 16) * width
    assert _count(whole) - _count(compact) == saved


def test_a_low_rank_text_tower_starts_from_the_best_approximation(tiny_models):
    whole = build_text_tower(tiny_models["bert"]).eval()
    low = build_text_tower(tiny_models["bert"], embedding_rank=4).eval()
    table = low.model.get_input_embeddings()
    got = table.table.weight.double() @ table.up.weight.double().T
    expected = _truncated_svd(whole.model.get_input_embeddings().weight.detach(), 4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert sorted(k for k in low.state_dict() if "word_embeddings" in k) == [
        "model.embeddings.word_embeddings.table.weight",
        "model.embeddings.word_embeddings.up.weight",
    ]
    with pytest.raises(DsmdError, match="factorised already"):
        factorize_word_embeddings(low.model, 2)


def test_minilm_factorised_at_full_rank_reproduces_minilm():
    whole = build_text_tower("minilm", layers=1).eval()
    compact = build_text_tower("minilm", layers=1, positions=32, embedding_rank=384).eval()
    batch = whole.tokenize(CAPTIONS + ["a dog runs on the grass next to a small brown fence"], max_length=32)
    with torch.no_grad():
        torch.testing.assert_close(compact(**batch), whole(**batch), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------- vision head


def test_factorised_imagenet_head_at_full_rank_reproduces_the_tower():
    whole = EfficientNetLite0Tower(head="imagenet_probs").eval()
    full = copy.deepcopy(whole)
    full.classifier = LowRankLinear.from_linear(whole.classifier, 1000)
    low = EfficientNetLite0Tower(head="imagenet_probs", head_rank=64).eval()
    assert (low.width, low.spec["head_rank"], low.classifier.down.weight.shape) == (1000, 64, (64, 1280))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(full(x), whole(x), atol=1e-6, rtol=1e-4)
        probs = low(x)
    assert probs.shape == (2, 1000)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    assert (_count(whole.classifier), _count(low.classifier)) == (1280 * 1000 + 1000, 64 * (1280 + 1000) + 1000)


# ------------------------------------------------------------------------------- the student


@pytest.fixture(scope="module")
def compact_cfg(tiny_models) -> StudentConfig:
    return StudentConfig(
        vision_head="imagenet_probs",
        vision_head_rank=32,
        image_size=32,
        text=tiny_models["bert"],
        text_embedding_rank=8,
        text_positions=16,
        max_text_length=16,
    )


def test_a_compact_student_rebuilds_from_its_blueprint_and_trains_everywhere(compact_cfg):
    student = build_student(compact_cfg, dim=24).eval()
    blueprint = json.loads(json.dumps(student_blueprint(student)))
    assert blueprint["text"]["embedding_rank"] == 8 and blueprint["vision"]["head_rank"] == 32
    assert blueprint["text"]["config"]["max_position_embeddings"] == 16
    rebuilt = student_from_blueprint(blueprint, student.text.tokenizer).eval()
    load_weights(rebuilt, student.state_dict(), "the compact student")  # strict: same names and shapes
    pixels, tokens = torch.randn(2, 3, 32, 32), student.tokenize(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.encode_images(pixels), student.encode_images(pixels))
        torch.testing.assert_close(rebuilt.encode_texts(**tokens), student.encode_texts(**tokens))
    student.train()
    image, text = student(torch.randn(3, 3, 32, 32), **tokens)
    (image @ text.T).diagonal().sum().backward()
    assert not [n for n, p in student.named_parameters() if p.grad is None]  # data parallelism needs all


def test_a_bag_of_word_embeddings_student_rebuilds_from_its_blueprint(compact_cfg):
    """``text_layers=0``: the text tower is its (factorised) word and position embeddings, mean-pooled."""
    student = build_student(dataclasses.replace(compact_cfg, text_layers=0), dim=24).eval()
    assert len(student.text.model.encoder.layer) == student.text.model.config.num_hidden_layers == 0
    blueprint = json.loads(json.dumps(student_blueprint(student)))
    rebuilt = student_from_blueprint(blueprint, student.text.tokenizer).eval()
    load_weights(rebuilt, student.state_dict(), "the bag-of-embeddings student")
    tokens = student.tokenize(CAPTIONS)
    with torch.no_grad():
        embedded = student.text.model.embeddings(input_ids=tokens["input_ids"])  # (B, L, H)
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        torch.testing.assert_close(student.text(**tokens), (embedded * mask).sum(1) / mask.sum(1))
        torch.testing.assert_close(rebuilt.encode_texts(**tokens), student.encode_texts(**tokens))


def test_parameter_counts_are_true_and_add_up(compact_cfg):
    compact = build_student(compact_cfg, dim=24)
    whole_cfg = dataclasses.replace(compact_cfg, vision_head_rank=None, text_embedding_rank=None, text_positions=None)
    whole = build_student(whole_cfg, dim=24)
    counts = compact.parameter_counts()
    assert set(counts) == {"vision", "vision_proj", "text", "text_proj", "total"}
    assert counts["total"] == compact.num_parameters() == _count(compact)
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    vocab, width = whole.text.model.get_input_embeddings().weight.shape
    text_saved = vocab * width - 8 * (vocab + width) + (32 - 16) * width
    vision_saved = 1280 * 1000 - 32 * (1280 + 1000)
    assert whole.parameter_counts()["text"] - counts["text"] == text_saved
    assert whole.parameter_counts()["vision"] - counts["vision"] == vision_saved
    assert whole.num_parameters() - compact.num_parameters() == text_saved + vision_saved
    # a whole student's blueprint is as before: no rank keys
    blueprint = student_blueprint(whole)
    assert "embedding_rank" not in blueprint["text"] and "head_rank" not in blueprint["vision"]


def test_the_new_keys_default_off_and_leave_run_hashes_alone():
    cfg = load_config("offline_student_d")
    assert (cfg.student.text_embedding_rank, cfg.student.text_positions, cfg.student.vision_head_rank) == (None,) * 3
    assert not {"text_embedding_rank", "text_positions", "vision_head_rank"} & set(config_to_dict(cfg)["student"])
    off = ["student.text_embedding_rank=null", "student.text_positions=null", "student.vision_head_rank=null"]
    assert run_hash(load_config("offline_student_d", off)) == run_hash(cfg)
    on = load_config("offline_student_d", ["student.text_embedding_rank=64"])
    assert config_to_dict(on)["student"]["text_embedding_rank"] == 64 and run_hash(on) != run_hash(cfg)


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(text_embedding_rank=0), "'student.text_embedding_rank': must be at least 1, got 0"),
        (dict(vision_head_rank=-1), "'student.vision_head_rank': must be at least 1, got -1"),
        (dict(text_positions=0), "'student.text_positions': must be at least 1, got 0"),
        (dict(text_positions=31), "31 is below student.max_text_length=32"),
        (dict(vision_head_rank=64), "needs student.vision_head=imagenet_probs"),
    ],
)
def test_bad_values_are_refused_when_the_config_is_made(change, message):
    with pytest.raises(DsmdError, match=message):
        StudentConfig(**change)


def test_ranks_and_positions_beyond_the_model_are_refused_when_built(tiny_models):
    base = dict(image_size=32, text=tiny_models["bert"], max_text_length=16)
    vocab, width = build_text_tower(tiny_models["bert"]).model.get_input_embeddings().weight.shape
    top = min(vocab, width)
    with pytest.raises(DsmdError, match=rf"text_embedding_rank={top + 1}: .* rank is 1\.\.{top}"):
        build_student(StudentConfig(**base, text_embedding_rank=top + 1), dim=8)
    with pytest.raises(DsmdError, match="text_positions=33: the text model has 32 position embeddings"):
        build_student(StudentConfig(**base, text_positions=33), dim=8)
    with pytest.raises(DsmdError, match=r"vision_head_rank=1001: .* 1000 x 1280, so its rank is 1\.\.1000"):
        build_student(StudentConfig(**base, vision_head="imagenet_probs", vision_head_rank=1001), dim=8)
