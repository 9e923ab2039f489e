"""The bench's stand-in Gemma-2: built small here through the full-size code path (write, quantise, cache)."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

from server.bench.gemma_gguf import GEMMA2_2B, bench_gguf_path, ensure_bench_gemma, is_bench_gguf
from server.bench.gemma_vocab import dictionary_pieces
from server.errors import ModelError
from server.models.quantize import quantize_q4_k_m
from tests.conftest import ROOT

# Gemma-2-2B's weight scales and padded vocab, at a size that builds in a fraction of a second. Widths are
# multiples of 256 so llama.cpp uses the same k-quants it uses at full size.
SMALL = dataclasses.replace(
    GEMMA2_2B,
    name="tadbot-bench-test",
    n_layer=3,
    n_embd=256,
    n_ff=512,
    n_head=2,
    n_head_kv=1,
    head_dim=128,
    n_ctx=1024,
    sliding_window=256,
    n_vocab=4096,
)
WORDS = ["my", "heart", "is", "racing", "breathe", "slow", "##ly", "calm"]
PROMPT = b"<start_of_turn>user\nMy heart is racing.<end_of_turn>\n<start_of_turn>model\n"

Steps = list[tuple[str, int, int]]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Steps]:
    steps: Steps = []
    path = ensure_bench_gemma(
        tmp_path_factory.mktemp("models"),
        lambda *step: steps.append(step),
        spec=SMALL,
        n_threads=1,
        words=WORDS,
    )
    return path, steps


@pytest.fixture(scope="module")
def llm(built: tuple[Path, Steps]) -> Iterator[llama_cpp.Llama]:
    model = llama_cpp.Llama(model_path=str(built[0]), n_ctx=512, n_threads=1, seed=7, verbose=False)
    yield model
    model.close()


def test_the_model_lands_under_bench_with_nothing_left_beside_it(built: tuple[Path, Steps]) -> None:
    path, _ = built
    assert path == bench_gguf_path(path.parents[1], SMALL)
    assert path.name == "tadbot-bench-test-q4_k_m.gguf"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_both_long_steps_report_progress_to_the_end(built: tuple[Path, Steps]) -> None:
    _, steps = built
    written = [(done, total) for step, done, total in steps if step == "write"]
    quantized = [(done, total) for step, done, total in steps if step == "quantize"]
    assert [done for done, _ in written] == sorted(done for done, _ in written)
    assert written[-1][0] == written[-1][1] > 0
    n_tensors = 2 + 11 * SMALL.n_layer
    assert quantized[0] == (0, n_tensors)
    assert quantized[-1] == (n_tensors, n_tensors)


def test_the_file_is_q4_k_m_with_the_spec_s_shape(built: tuple[Path, Steps], llm: llama_cpp.Llama) -> None:
    metadata = llm.metadata
    assert metadata["general.architecture"] == "gemma2"
    assert metadata["general.file_type"] == "15"  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert metadata["gemma2.block_count"] == str(SMALL.n_layer)
    assert metadata["gemma2.attention.sliding_window"] == str(SMALL.sliding_window)
    assert llm.n_embd() == SMALL.n_embd
    assert llm.n_vocab() == SMALL.n_vocab
    types = {tensor.name: tensor.tensor_type for tensor in gguf.GGUFReader(built[0]).tensors}
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q6_K  # tied output: kept finer
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q4_K
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_it_generates_words_and_sentence_ends_never_filler(llm: llama_cpp.Llama) -> None:
    prompt = llm.tokenize(PROMPT, add_bos=True, special=True)
    llm.reset()
    llm.eval(prompt)
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(llm.n_vocab(),))
    assert np.isfinite(logits).all()
    generated = []
    for token in llm.generate(prompt, temp=0.8, top_k=40, top_p=0.95):
        generated.append(token)
        if len(generated) == 48:
            break
    pieces = [llm.detokenize([token]).decode() for token in generated]
    words = [piece for piece in pieces if piece.startswith(" ") and piece[1:2].isalnum()]
    assert all(pieces), f"filler or control tokens in {generated}"
    assert len(words) >= 0.8 * len(pieces), pieces
    assert any(piece.endswith(".") for piece in pieces), pieces


def test_the_dictionary_makes_english_cost_about_a_token_a_word(llm: llama_cpp.Llama) -> None:
    pieces = [
        llm.detokenize([t]) for t in llm.tokenize(b" my heart is racing, breathe slowly", add_bos=False)
    ]
    assert pieces == [b" my", b" heart", b" is", b" racing", b",", b" breathe", b" slowly"]
    # A word outside the dictionary still tokenizes, a piece at a time.
    assert b"".join(llm.detokenize([t]) for t in llm.tokenize(b" zebra", add_bos=False)) == b" zebra"


def test_dictionary_pieces_hold_every_prefix_capitals_and_word_endings() -> None:
    pieces = dictionary_pieces(["calm", "##ly", "[UNK]", "café", "2nd"])
    assert pieces == ["▁c", "▁ca", "▁cal", "▁calm", "▁C", "▁Ca", "▁Cal", "▁Calm", "ly"]


def test_a_second_call_reuses_the_file(built: tuple[Path, Steps]) -> None:
    path, _ = built
    before = path.stat()
    steps: Steps = []
    assert (
        ensure_bench_gemma(path.parents[1], lambda *step: steps.append(step), spec=SMALL, words=WORDS) == path
    )
    assert steps == []
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == (before.st_mtime_ns, before.st_ino)


def test_a_truncated_or_foreign_file_is_rebuilt(built: tuple[Path, Steps], tmp_path: Path) -> None:
    target = bench_gguf_path(tmp_path, SMALL)
    target.parent.mkdir()
    target.write_bytes(built[0].read_bytes()[: built[0].stat().st_size // 2])
    assert not is_bench_gguf(target, SMALL)
    assert not is_bench_gguf(built[0], dataclasses.replace(SMALL, n_layer=2))
    assert ensure_bench_gemma(tmp_path, spec=SMALL, words=WORDS) == target
    assert target.read_bytes() == built[0].read_bytes()


@pytest.mark.parametrize("step", ["write", "quantize"])
def test_a_build_killed_midway_never_leaves_a_file_under_the_final_name(
    built: tuple[Path, Steps], tmp_path: Path, step: str
) -> None:
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from server.bench.gemma_gguf import ensure_bench_gemma\n"
        "from tests.server.test_bench_gguf import SMALL, WORDS\n"
        "def die(step, done, total):\n"
        "    if step == sys.argv[2] and 0 < done < total:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "ensure_bench_gemma(Path(sys.argv[1]), die, spec=SMALL, n_threads=1, words=WORDS)\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), step], cwd=ROOT, capture_output=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    target = bench_gguf_path(tmp_path, SMALL)
    assert not target.exists()
    assert list(target.parent.glob("*.part"))  # what the killed build left behind
    assert ensure_bench_gemma(tmp_path, spec=SMALL, words=WORDS) == target
    assert target.read_bytes() == built[0].read_bytes()
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_an_interrupted_build_cleans_up_after_itself(tmp_path: Path) -> None:
    def interrupt(step: str, done: int, total: int) -> None:
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_bench_gemma(tmp_path, interrupt, spec=SMALL, words=WORDS)
    assert list((tmp_path / "bench").iterdir()) == []


def test_a_file_llama_cpp_cannot_read_is_a_quantize_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00truncated")
    with pytest.raises(ModelError) as error:
        quantize_q4_k_m(bad, tmp_path / "out.gguf")
    assert error.value.code == "quantize_failed"
    assert str(bad) in error.value.message
