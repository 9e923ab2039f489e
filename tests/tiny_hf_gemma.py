"""A tiny random-weight Gemma-2 in Hugging Face's layout, with a SentencePiece tokenizer trained here on the
test's own text: the fine-tune chain runs on it on a CPU in seconds, with no download.

The tokenizer keeps Gemma's ids for <pad> <eos> <bos> <unk>, its turn markers and byte fallback (llama.cpp
needs the byte tokens). The embeddings of bytes 0x80-0xFF are zero, so their logits never win a greedy
choice and replies come out as text: a random model would otherwise emit stray bytes that never complete a
UTF-8 character (the server's guard against that is tested with `quiet_high_bytes=False`). The hidden size
is 256, so llama.cpp's Q4_K (256-wide blocks) quantises it for real.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

from server.bench.gemma_vocab import GEMMA2_CHAT_TEMPLATE


def build_tiny_hf_gemma2(
    folder: Path,
    corpus: Iterable[str],
    *,
    seed: int = 0,
    vocab_size: int = 512,
    quiet_high_bytes: bool = True,
) -> Path:
    """`quiet_high_bytes=False` keeps the random embeddings of bytes 0x80-0xFF: a model that emits stray
    bytes, to test what the server does with one."""
    import sentencepiece
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    model_file = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in corpus if line.strip()]),
        model_writer=model_file,
        vocab_size=vocab_size,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        byte_fallback=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model_file.getvalue())
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GemmaTokenizer",
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
                "chat_template": GEMMA2_CHAT_TEMPLATE,
            }
        ),
        encoding="utf-8",
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    torch.manual_seed(seed)
    config = transformers.Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=128,
        max_position_embeddings=2048,
        sliding_window=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    model = transformers.Gemma2ForCausalLM(config)
    high_bytes = tokenizer.convert_tokens_to_ids([f"<0x{byte:02X}>" for byte in range(0x80, 0x100)])
    if quiet_high_bytes:
        with torch.no_grad():
            model.get_input_embeddings().weight[high_bytes] = 0.0
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
