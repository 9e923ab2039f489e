"""The llama.cpp the project runs: built for a CPU family, without the AMX kernels that crash on Q4_K_M,
and its wheel kept under a key of how it was built (systemd/llama-build.sh)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

BUILD = ROOT / "systemd" / "llama-build.sh"
REBUILD = (
    "rebuild it without them: `rm -rf .venv && make test` (or `bash systemd/llama-build.sh "
    ".venv/bin/python`), which builds with GGML_NATIVE=OFF and the instruction sets named; "
    "see the README's 'llama.cpp build'"
)


def _script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("CMAKE_ARGS", "LLAMA_CPP_VERSION")}
    return subprocess.run(
        ["bash", str(BUILD), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_llama_cpp_in_use_has_no_amx_kernels_and_keeps_the_repack_path() -> None:
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    assert "AMX" not in info, (
        f"this llama.cpp has Intel AMX kernels, which segfault on Q4_K_M ({info}): {REBUILD}"
    )
    assert "REPACK = 1" in info, f"the CPU repack path (ARM's fast Q4_0) is off: {info}"
    if platform.machine() == "x86_64":
        assert "AVX2 = 1" in info and "AVX512 = 1" not in info, f"not the x86-64-v3 build: {info}; {REBUILD}"


@pytest.mark.parametrize(
    ("machine", "wanted", "unwanted"),
    [
        (
            "x86_64",
            ["-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_AMX_INT8=OFF"],
            ["-DGGML_NATIVE=ON", "-DGGML_AMX_INT8=ON", "-DGGML_CPU_REPACK=OFF"],
        ),
        (
            "aarch64",
            ["-DGGML_NATIVE=OFF", "-DGGML_CPU_ARM_ARCH=armv8-a"],
            ["-DGGML_NATIVE=ON", "-DGGML_AVX2=ON", "-DGGML_CPU_REPACK=OFF"],
        ),
    ],
)
def test_the_default_build_names_its_instruction_sets(
    tmp_path: Path, machine: str, wanted: list[str], unwanted: list[str]
) -> None:
    """-march=native would follow the build machine's CPU (AMX on a Sapphire Rapids): never the default.
    `uname` is replaced on PATH so both architectures' branches run here."""
    (tmp_path / "uname").write_text(f"#!/bin/sh\necho {machine}\n", encoding="utf-8")
    (tmp_path / "uname").chmod(0o755)
    done = _script("--print-args", PATH=f"{tmp_path}:{os.environ['PATH']}")
    assert done.returncode == 0, done.stderr
    args = done.stdout.split()
    assert "-DLLAVA_BUILD=OFF" in args
    assert set(wanted) <= set(args) and not set(unwanted) & set(args), args


def test_cmake_args_from_the_environment_replace_the_default() -> None:
    done = _script("--print-args", CMAKE_ARGS="-DGGML_BLAS=ON")
    assert done.stdout.strip() == "-DGGML_BLAS=ON"


def _fake_wheel(folder: Path, version: str) -> Path:
    """A pure-Python stand-in for the llama-cpp-python wheel, so no compile is needed to test the cache."""
    folder.mkdir(parents=True)
    wheel = folder / f"llama_cpp_python-{version}-py3-none-any.whl"
    info = f"llama_cpp_python-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as out:
        out.writestr("tadbot_wheel_probe.py", f"BUILT_FROM = {str(folder)!r}\n")
        out.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: {version}\n"
        )
        out.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: tadbot-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        out.writestr(
            f"{info}/RECORD", f"tadbot_wheel_probe.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n"
        )
    return wheel


def test_a_wheel_is_kept_per_version_options_machine_and_python(tmp_path: Path) -> None:
    """pip's own cache keys a built wheel by the sdist alone, so a native build from one CPU would come back
    on the next; this cache keys it by how it was built, and installs the one that matches."""
    cache = tmp_path / "cache"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    env = {"TADBOT_WHEEL_CACHE": str(cache), "LLAMA_CPP_VERSION": "0.3.36"}

    def wheel_dir(**more: str) -> Path:
        done = _script("--print-wheel-dir", python, **{**env, **more})
        assert done.returncode == 0, done.stderr
        return Path(done.stdout.strip())

    portable, blas = wheel_dir(), wheel_dir(CMAKE_ARGS="-DGGML_BLAS=ON")
    other_version = wheel_dir(LLAMA_CPP_VERSION="0.3.35")
    assert portable.parent == cache and len({portable, blas, other_version}) == 3
    assert wheel_dir() == portable, "the same build must find the same wheel"

    _fake_wheel(portable, "0.3.36")
    _fake_wheel(blas, "0.3.36")
    done = _script(python, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"from {portable}" in done.stdout and "building" not in done.stdout

    def built_from() -> str:
        probe = [python, "-c", "import tadbot_wheel_probe as p; print(p.BUILT_FROM)"]
        return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()

    assert built_from() == str(portable)
    # The same version built another way replaces the one in the venv (a plain pip install would keep it).
    done = _script(python, **{**env, "CMAKE_ARGS": "-DGGML_BLAS=ON"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert built_from() == str(blas)


def test_usage_errors_are_one_line() -> None:
    done = _script()
    assert done.returncode == 1 and done.stderr.startswith("Usage:")
    missing = _script("/no/such/python")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "llama-build.sh: error: /no/such/python is not an executable Python"
