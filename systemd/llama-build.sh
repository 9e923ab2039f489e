#!/usr/bin/env bash
# Installs llama-cpp-python into a venv from a wheel built for this CPU family, never for this one CPU.
#
# Why not a plain `pip install`: llama.cpp's default build is -march=native. On an Intel CPU with AMX
# (Sapphire Rapids and later) that compiles in the AMX matmul kernels, which segfault on Q4_K_M models,
# and -march=native turns them on whatever the GGML_AMX_* options say. A native wheel also lands in pip's
# wheel cache, which knows nothing of CMAKE_ARGS, and is reused on the next CPU, where it may crash with
# an illegal instruction. So the build names its instruction sets (GGML_NATIVE=OFF) and the wheel is kept
# in a cache of its own, keyed by version, CMake options, machine and Python.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: llama-build.sh PYTHON                    install llama-cpp-python into the venv of PYTHON
       llama-build.sh --print-args               print the CMake options this machine builds with
       llama-build.sh --print-wheel-dir PYTHON   print where that build's wheel is kept

Environment:
  CMAKE_ARGS           the CMake options (default: a portable set for `uname -m`, printed by --print-args)
  LLAMA_CPP_VERSION    the llama-cpp-python release (default: the one TADBot is tested with)
  TADBOT_WHEEL_CACHE   where built wheels are kept (default: ${XDG_CACHE_HOME:-~/.cache}/tadbot/wheels)
EOF
}

LLAMA_CPP_VERSION=${LLAMA_CPP_VERSION:-0.3.36}

# x86_64: x86-64-v3 (AVX2, FMA, F16C, BMI2: every x86 server and desktop CPU since 2013-2015), AMX and
# AVX-512 off. aarch64: armv8-a, what a Pi 4's Cortex-A72 runs, so one wheel serves every 64-bit Pi.
# GGML_CPU_REPACK stays at its default (on): ARM's fast Q4_0 path. LLAVA_BUILD=OFF skips a library
# TADBot does not use.
default_args() {
    local common="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"
    case $(uname -m) in
        x86_64 | amd64)
            echo "$common -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_F16C=ON -DGGML_FMA=ON -DGGML_BMI2=ON" \
                "-DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
            ;;
        aarch64 | arm64) echo "$common -DGGML_CPU_ARM_ARCH=armv8-a" ;;
        *) echo "$common" ;;
    esac
}

args=${CMAKE_ARGS:-$(default_args)}

print_dir=0
case ${1:-} in
    --print-args)
        echo "$args"
        exit 0
        ;;
    --print-wheel-dir)
        print_dir=1
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
esac
if (($# != 1)); then
    usage >&2
    exit 1
fi

python=$1
[[ -x $python ]] || {
    echo "llama-build.sh: error: $python is not an executable Python" >&2
    exit 1
}
tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
key=$(printf '%s\n' "$LLAMA_CPP_VERSION" "$args" "$(uname -m)" "$tag" | sha256sum | cut -c1-16)
cache=${TADBOT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tadbot/wheels}
dir=$cache/llama-cpp-python-$LLAMA_CPP_VERSION-$key
if ((print_dir)); then
    echo "$dir"
    exit 0
fi

shopt -s nullglob
wheels=("$dir"/llama_cpp_python-*.whl)
if ((${#wheels[@]} == 0)); then
    echo "llama-build.sh: building llama-cpp-python $LLAMA_CPP_VERSION with CMAKE_ARGS=\"$args\"" \
        "(about 10 minutes on 2 cores)"
    mkdir -p "$cache"
    staging=$(mktemp -d "$cache/.building-XXXXXX")
    trap 'rm -rf "$staging"' EXIT
    # --no-cache-dir: pip's own wheel cache may hold a native build of the same version.
    CMAKE_ARGS=$args "$python" -m pip wheel --no-deps --no-cache-dir -w "$staging" \
        "llama-cpp-python==$LLAMA_CPP_VERSION"
    rm -rf "$dir"
    mv "$staging" "$dir"
    trap - EXIT
    wheels=("$dir"/llama_cpp_python-*.whl)
else
    echo "llama-build.sh: llama-cpp-python $LLAMA_CPP_VERSION from $dir"
fi
# Forced: a venv may hold the same version built another way (a native build from pip's cache).
"$python" -m pip install --force-reinstall --no-deps "${wheels[0]}"
"$python" -m pip install "${wheels[0]}"
