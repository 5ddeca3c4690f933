"""Check dsmd's BEiT-3 against the official code: same state-dict keys, same features.

Builds the official ``BEiT3ForRetrieval`` (microsoft/unilm ``beit3/modeling_finetune.py`` on
torchscale 0.2.0, the version unilm's ``beit3/requirements.txt`` pins), saves its weights in the
released checkpoints' layout (``{"model": state_dict}``), loads that file with dsmd
(``dsmd.teachers.beit3``) and compares the state-dict keys and shapes, the encoder outputs and
the retrieval features (raw, and L2-normalised as ``forward(only_infer=True)`` returns them).
``--checkpoint`` loads a released checkpoint into both models instead of random weights;
``--spm`` (``beit3.spm``) also runs dsmd's whole ``BEiT3Teacher``, tokenizer included, against the
official model, and compares the ids with transformers 4's slow ``XLMRobertaTokenizer`` when that
is importable (it is not under transformers 5).

The official code imports timm, fairscale and unilm's ``utils`` (deepspeed, torchvision...),
none of which may be installed next to this project's torch (OFFLINE.md). The parts it uses
with drop-path 0 and no activation checkpointing are trivial, so this script writes stub modules
for them to a temporary folder and puts it first on ``sys.path``: ``timm.models.layers``
(``trunc_normal_``, ``drop_path``), ``timm.models.registry`` (``register_model``),
``fairscale.nn`` (``checkpoint_wrapper``, ``wrap``) and unilm's ``utils`` (``ClipLoss``,
``get_rank``, ``get_world_size``). Nothing is installed.

Needs:
  - torchscale 0.2.0's source:
        pip download torchscale==0.2.0 --no-deps -d /tmp/ts
        tar xzf /tmp/ts/torchscale-0.2.0.tar.gz -C /tmp/ts
  - unilm's ``beit3`` folder (``modeling_utils.py``, ``modeling_finetune.py``), e.g. from a
    clone of https://github.com/microsoft/unilm.

Run:
  .venv/bin/python benchmarks/verify_beit3_official.py --torchscale /tmp/ts/torchscale-0.2.0 \
      --unilm-beit3 /path/to/unilm/beit3 [--size base|large] [--checkpoint X.pth] [--spm beit3.spm]

Printed here (CPU, torch 2.13, 2 images at 384 px and 2 texts of 64 and 17 tokens; random
official-initialised weights with every parameter perturbed; unilm's two files transcribed from
the public source, the rest of unilm absent; tolerance 1e-4 x the feature scale, ~5.8):

  base:  keys identical (494 tensors); max |diff| encoder image 6.3e-06 text 6.5e-06,
         features image 8.6e-06 text 7.9e-06, normalised 2.2e-07 / 1.9e-07 -> OK (19 s)
  large: keys identical (974 tensors); max |diff| encoder image 1.7e-05 text 1.4e-05,
         features image 1.7e-05 text 1.9e-05, normalised 3.2e-07 / 3.6e-07 -> OK (79 s)

With ``--spm`` (a 2000-piece sentencepiece model, ``--vocab-size 2010``) the whole
``BEiT3Teacher`` (checkpoint file, tokenizer, batching) matched too: text 9.1e-06, image 6.1e-06.
A negative control (dsmd's FFN switched to tanh-approximated GELU) gives 2.0e-03 -> MISMATCH.
The tokenizer was compared separately, in a throwaway venv with transformers 4.46.3: the slow
``XLMRobertaTokenizer`` and dsmd's ``BEiT3Tokenizer`` give identical ids on 1338 texts over a
2000-piece sentencepiece model (with the same sentencepiece release on both sides; 0.2.0 and
0.2.3 break some ties between equal-score segmentations differently, e.g. in "=====").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F

STUBS = {
    "timm/__init__.py": "",
    "timm/models/__init__.py": "",
    "timm/models/layers.py": """
        import torch

        def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
            return torch.nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)

        def drop_path(x, drop_prob=0.0, training=False):
            assert drop_prob == 0.0 or not training, "stub: drop path is not implemented"
            return x
    """,
    "timm/models/registry.py": """
        def register_model(fn):
            return fn
    """,
    "fairscale/__init__.py": "",
    "fairscale/nn/__init__.py": """
        def checkpoint_wrapper(module, *args, **kwargs):
            return module

        def wrap(module, *args, **kwargs):
            return module
    """,
    "utils.py": """
        import torch

        class ClipLoss(torch.nn.Module):
            def __init__(self, *args, **kwargs):
                super().__init__()

        def get_rank():
            return 0

        def get_world_size():
            return 1
    """,
}


def _install_stubs(folder: Path) -> None:
    for name, source in STUBS.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its initial value, so layer norms and biases matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torchscale", type=Path, required=True, help="torchscale 0.2.0 source")
    parser.add_argument("--unilm-beit3", type=Path, required=True, help="unilm's beit3 folder")
    parser.add_argument("--size", choices=("base", "large"), default="base")
    parser.add_argument("--checkpoint", type=Path, help="a released *_retrieval.pth (optional)")
    parser.add_argument("--spm", type=Path, help="beit3.spm (with --checkpoint)")
    parser.add_argument("--vocab-size", type=int, default=64010, help="text embedding rows of the random model")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    torch.manual_seed(0)
    stub_dir = Path(tempfile.mkdtemp(prefix="beit3_stubs_"))
    _install_stubs(stub_dir)
    sys.path[:0] = [str(stub_dir), str(args.torchscale), str(args.unilm_beit3)]
    import modeling_finetune  # the official model (unilm), on torchscale

    from dsmd.teachers.beit3.checkpoint import build_model, config_from_state_dict, load_state_dict

    factory = getattr(modeling_finetune, f"beit3_{args.size}_patch16_384_retrieval")
    official = factory(vocab_size=args.vocab_size).eval()
    if args.checkpoint is None:
        _perturb(official, seed=1)
        checkpoint = stub_dir / f"beit3_{args.size}_random_retrieval.pth"
        torch.save({"model": official.state_dict()}, checkpoint)
    else:
        checkpoint = args.checkpoint
        official.load_state_dict(load_state_dict(checkpoint), strict=True)

    state_dict = load_state_dict(checkpoint)
    config = config_from_state_dict(state_dict, str(checkpoint))
    ours = build_model(state_dict, config, str(checkpoint)).eval()
    print(f"inferred {config}")

    official_sd, our_sd = official.state_dict(), ours.state_dict()
    keys_ok = set(official_sd) == set(our_sd) and all(official_sd[k].shape == our_sd[k].shape for k in our_sd)
    print(
        f"keys {'identical' if keys_ok else 'DIFFER'} ({len(our_sd)} ours, {len(official_sd)} "
        f"official); only official: {sorted(set(official_sd) - set(our_sd))[:5]}, only ours: "
        f"{sorted(set(our_sd) - set(official_sd))[:5]}"
    )

    # Two images; two texts, one padded (the official padding mask: 1 on padding).
    pixels = torch.randn(2, 3, 384, 384)
    lengths = [64, 17]
    ids = torch.full((2, 64), 1, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(4, args.vocab_size - 10, (n,))
        ids[i, 0], ids[i, n - 1] = 0, 2
    padding = torch.arange(64)[None, :] >= torch.tensor(lengths)[:, None]

    with torch.no_grad():
        off_image_out = official.beit3(textual_tokens=None, visual_tokens=pixels)["encoder_out"]
        off_text_out = official.beit3(textual_tokens=ids, visual_tokens=None, text_padding_position=padding.long())[
            "encoder_out"
        ]
        off_image = official.vision_head(off_image_out[:, 0])
        off_text = official.language_head(off_text_out[:, 0])
        off_image_n, off_text_n = official(
            image=pixels, text_description=ids, padding_mask=padding.long(), only_infer=True
        )
        our_image_out = ours.beit3.encode_images(pixels)
        our_text_out = ours.beit3.encode_texts(ids, padding)
        our_image = ours.image_features(pixels)
        our_text = ours.text_features(ids, padding)

    real = ~padding
    diffs = {
        "encoder image": _max_diff(off_image_out, our_image_out),
        "encoder text": _max_diff(off_text_out[real], our_text_out[real]),
        "features image": _max_diff(off_image, our_image),
        "features text": _max_diff(off_text, our_text),
        "normalised image": _max_diff(off_image_n, F.normalize(our_image, dim=-1)),
        "normalised text": _max_diff(off_text_n, F.normalize(our_text, dim=-1)),
    }
    scale = max(off_image.abs().max().item(), off_text.abs().max().item())
    print(f"feature scale (max |x|): {scale:.3g}")
    for name, value in diffs.items():
        print(f"max |diff| {name}: {value:.2e}")
    ok = keys_ok and all(v <= args.tolerance * max(1.0, scale) for v in diffs.values())

    if args.spm is not None:
        ok &= _compare_tokenizer(args.spm)
        ok &= _compare_teacher(official, checkpoint, args.spm, pixels, args.tolerance * scale)
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def _compare_teacher(official, checkpoint: Path, spm: Path, pixels, tolerance: float) -> bool:
    """dsmd's whole teacher (tokenizer included) against the official model on its ids."""
    from dsmd.teachers.beit3 import BEiT3Teacher

    teacher = BEiT3Teacher(checkpoint, tokenizer=spm)
    captions = ["A man riding a horse on the beach.", "Two dogs play in the snow."]
    ids, padding = teacher.tokenizer(captions, teacher.max_length)
    with torch.no_grad():
        out = official.beit3(textual_tokens=ids, text_padding_position=padding.long())
        text = official.language_head(out["encoder_out"][:, 0])
        image = official.vision_head(official.beit3(visual_tokens=pixels)["encoder_out"][:, 0])
    diffs = (
        _max_diff(teacher.encode_texts(captions), text),
        _max_diff(teacher.encode_images(pixels), image),
    )
    print(f"teacher: max |diff| text {diffs[0]:.2e} image {diffs[1]:.2e}")
    return max(diffs) <= tolerance


def _compare_tokenizer(spm: Path) -> bool:
    from dsmd.teachers.beit3.tokenizer import BEiT3Tokenizer

    ours = BEiT3Tokenizer(spm)
    captions = ["A man riding a horse on the beach.", "Zwei Hunde spielen im Schnee!", ""]
    print(f"tokenizer: {ours.vocab_size} ids; {captions[0]!r} -> {ours.tokenize(captions[0])}")
    try:
        import transformers
        from transformers import XLMRobertaTokenizer

        if int(transformers.__version__.split(".")[0]) >= 5:
            raise ImportError("transformers 5 has no slow XLMRobertaTokenizer")
    except ImportError as exc:
        print(f"tokenizer: official ids not compared ({exc})")
        return True
    official = XLMRobertaTokenizer(str(spm))
    same = all(official.convert_tokens_to_ids(official.tokenize(c)) == ours.tokenize(c) for c in captions)
    print(f"tokenizer: ids {'identical' if same else 'DIFFER'} to XLMRobertaTokenizer's")
    return same


if __name__ == "__main__":
    sys.exit(main())
