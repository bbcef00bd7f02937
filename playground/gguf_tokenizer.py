"""Rebuild tokenizers that transformers' GGUF import gets wrong.

Gemma 3 GGUFs store a SentencePiece-BPE vocabulary as tokens + scores and no merges. transformers 5.17 turns that
into a BPE tokenizer with *no merges* once saved, so text is split into single characters and the model answers
nonsense. The merges can be recovered from the scores (as transformers does for SentencePiece models).
"""
from __future__ import annotations

from pathlib import Path


def gemma_tokenizer_from_gguf(gguf: Path):
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import generate_merges
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    info = load_gguf_checkpoint(str(gguf), return_tensors=False)["tokenizer"]

    def fix(piece: str) -> str:  # same spelling fixes as transformers' GGUFGemmaConverter
        if piece == "<0x09>":
            return "\t"
        if " " in piece and not piece.strip():
            return "▁" * len(piece)
        return piece

    tokens = [fix(t) for t in info["tokens"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = generate_merges(vocab, dict(zip(tokens, info["scores"])))
    tok = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    control = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(tokens, info["token_type"]) if kind == 3]  # 3 = CONTROL in GGUF
    tok.add_tokens(control, special_tokens=True)
    return tok
