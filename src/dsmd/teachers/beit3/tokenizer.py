"""BEiT-3's text preprocessing: XLM-RoBERTa ids over ``beit3.spm``, ``<s> ... </s>``, padding.

BEiT-3 tokenises with transformers' slow ``XLMRobertaTokenizer(beit3.spm)`` (unilm
``get_sentencepiece_model_for_beit3``), which maps sentencepiece ids into fairseq's layout:
``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, then sentencepiece id ``i`` -> ``i + 1`` (its
own ``<unk>``, id 0, -> 3), and ``<mask>`` last (``len(spm) + 1``). transformers 5 replaced that
class by a tokenizers-backed one that, given ``vocab_file=``, silently knows only the five
special tokens, so this module reproduces the slow tokenizer on sentencepiece directly.

A caption becomes (unilm ``BaseDataset._get_text_segment``) ``[<s>] + ids[:max_len - 2] +
[</s>]``, padded with ``<pad>``; the padding mask is True on padding.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from dsmd.errors import DsmdError

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
_FAIRSEQ_SPECIALS = {"<s>": BOS_ID, "<pad>": PAD_ID, "</s>": EOS_ID, "<unk>": UNK_ID}
_FAIRSEQ_OFFSET = 1
_SPECIAL_SPLIT = re.compile("(<s>|<pad>|</s>|<unk>|<mask>)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class BEiT3Tokenizer:
    """The XLM-RoBERTa-style tokenizer of BEiT-3.

    Args:
        path: the sentencepiece model (``beit3.spm``).

    Attributes:
        vocab_size: ids it can produce: the sentencepiece pieces, fairseq's 4 special tokens in
            place of sentencepiece's 3, and ``<mask>`` (64002 for ``beit3.spm``).
        sha256: the file's fingerprint, for the teacher's identity.

    Raises:
        DsmdError: the file is missing or is not a sentencepiece model.
    """

    def __init__(self, path: str | Path) -> None:
        import sentencepiece

        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise DsmdError(
                f"BEiT-3 tokenizer not found: {self.path}. Set teacher.tokenizer to the path of "
                "beit3.spm, the sentencepiece model released with BEiT-3 (microsoft/unilm, beit3)."
            )
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as exc:
            raise DsmdError(
                f"{self.path} is not a sentencepiece model ({exc}). Set teacher.tokenizer to "
                "beit3.spm, the tokenizer released with BEiT-3 (microsoft/unilm, beit3)."
            ) from exc
        self.vocab_size = self.sp.get_piece_size() + _FAIRSEQ_OFFSET + 1
        self._special_ids = {**_FAIRSEQ_SPECIALS, "<mask>": self.vocab_size - 1}
        self.sha256 = _sha256(self.path)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``, without ``<s>`` / ``</s>`` (slow ``XLMRobertaTokenizer``).

        As there, special tokens written in the text (``<mask>``, ``<s>``, ...) are kept
        whole, and ``<mask>`` swallows the spaces before it.
        """
        ids: list[int] = []
        chunks = _SPECIAL_SPLIT.split(text)
        for i, chunk in enumerate(chunks):
            if i % 2:  # the splitting pattern's captured special tokens
                ids.append(self._special_ids[chunk])
                continue
            if i + 1 < len(chunks) and chunks[i + 1] == "<mask>":
                chunk = chunk.rstrip()
            for piece in self.sp.encode(chunk, out_type=str) if chunk else ():
                if piece in _FAIRSEQ_SPECIALS:
                    ids.append(_FAIRSEQ_SPECIALS[piece])
                    continue
                spm_id = self.sp.piece_to_id(piece)
                ids.append(spm_id + _FAIRSEQ_OFFSET if spm_id else UNK_ID)
        return ids

    def __call__(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``texts`` as BEiT-3 does, padded to the longest.

        Padding to the longest instead of to ``max_length`` changes nothing: padded keys get
        no attention weight and the features are read at position 0.

        Args:
            texts: ``B`` strings.
            max_length: the most tokens per text, ``<s>`` and ``</s>`` included (>= 2).

        Returns:
            ``input_ids`` ``(B, L)`` int64 and ``padding_mask`` ``(B, L)`` bool (True on
            ``<pad>``), ``L <= max_length``.
        """
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (<s> and </s>), got {max_length}")
        rows = [[BOS_ID, *self.tokenize(text)[: max_length - 2], EOS_ID] for text in texts]
        length = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
        padding_mask = torch.ones(len(rows), length, dtype=torch.bool)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            padding_mask[i, : len(row)] = False
        return input_ids, padding_mask
