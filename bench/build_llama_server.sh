#!/usr/bin/env bash
# Build llama.cpp's llama-server from the llama.cpp that llama-cpp-python vendors in its sdist,
# with the CPU flags scripts/setup.sh uses, into a cache folder OUTSIDE the repository, keyed by
# (version, CMAKE_ARGS). Prints the binary's path (last line of stdout). Cached: a second run
# only prints the path.
#   bash bench/build_llama_server.sh            # then: bench/traffic_bench.py --llama-server PATH
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON}"
key=$(printf '%s %s' "$VERSION" "$CMAKE_ARGS" | sha256sum | cut -c1-16)
out="${XDG_CACHE_HOME:-$HOME/.cache}/llm-node/llama-server-$key"
if [[ -x "$out/llama-server" ]]; then
  echo "$out/llama-server"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$VERSION" >&2
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of flags
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF $CMAKE_ARGS >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$out.tmp"
cp "$work/build/bin/llama-server" "$out.tmp/"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out/llama-server"
