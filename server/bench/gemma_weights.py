"""The stand-in Gemma-2's random weights, planned tensor by tensor so the file can be written one tensor at a
time. Embedding dimension 0 carries each token's class (`server.bench.gemma_vocab`), and the norms' gains
keep that channel flowing from the input embedding to the output logits untouched by the blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from server.bench.gemma_gguf import GemmaSpec

_EMBEDDING_CHUNK_ROWS = 8192  # float64 rows drawn at once: 150 MB at Gemma-2-2B's width

Tensor = tuple[str, tuple[int, ...], type, Callable[[], "np.ndarray"]]
"""A tensor's name, numpy shape, numpy type, and the function that makes its data."""
TensorPlan = list[Tensor]


def tensor_plan(spec: GemmaSpec, rng: np.random.Generator, token_class: np.ndarray) -> TensorPlan:
    """Each tensor's name, shape, type and maker, in file order; makers draw from `rng` in that order."""
    import numpy as np

    n_embd, n_vocab = spec.n_embd, len(token_class)

    def matrix(rows: int, cols: int) -> np.ndarray:
        weight = rng.standard_normal((rows, cols))
        weight *= spec.matrix_gain / np.sqrt(cols)
        return weight.astype(np.float16)

    def norm(gain: float, class_gain: float) -> np.ndarray:
        weight = np.full(n_embd, gain, dtype=np.float32)
        weight[0] = class_gain
        return weight

    def embeddings() -> np.ndarray:
        out = np.empty((n_vocab, n_embd), dtype=np.float16)
        for start in range(0, n_vocab, _EMBEDDING_CHUNK_ROWS):
            stop = min(start + _EMBEDDING_CHUNK_ROWS, n_vocab)
            rows = rng.standard_normal((stop - start, n_embd)) * spec.embedding_std
            rows[:, 0] = token_class[start:stop] * spec.class_strength
            out[start:stop] = rows
        return out

    def weights(name: str, rows: int, cols: int) -> Tensor:
        return name, (rows, cols), np.float16, lambda: matrix(rows, cols)

    def gains(name: str, gain: float, class_gain: float) -> Tensor:
        return name, (n_embd,), np.float32, lambda: norm(gain, class_gain)

    plan: TensorPlan = [
        ("token_embd.weight", (n_vocab, n_embd), np.float16, embeddings),
        gains("output_norm.weight", 1.0, spec.class_output_gain),
    ]
    q_dim, kv_dim = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    for layer in range(spec.n_layer):
        blk = f"blk.{layer}"
        plan += [
            gains(f"{blk}.attn_norm.weight", 1.0, 1.0),
            weights(f"{blk}.attn_q.weight", q_dim, n_embd),
            weights(f"{blk}.attn_k.weight", kv_dim, n_embd),
            weights(f"{blk}.attn_v.weight", kv_dim, n_embd),
            weights(f"{blk}.attn_output.weight", n_embd, q_dim),
            # The class channel must pass through the blocks untouched, so their outputs skip it.
            gains(f"{blk}.post_attention_norm.weight", spec.block_gain, 0.0),
            gains(f"{blk}.ffn_norm.weight", 1.0, 1.0),
            weights(f"{blk}.ffn_gate.weight", spec.n_ff, n_embd),
            weights(f"{blk}.ffn_up.weight", spec.n_ff, n_embd),
            weights(f"{blk}.ffn_down.weight", n_embd, spec.n_ff),
            gains(f"{blk}.post_ffw_norm.weight", spec.block_gain, 0.0),
        ]
    return plan
