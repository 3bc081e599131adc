# search-app images. Two targets:
#
#   gpu (the default): vLLM (CUDA) in-process, FAISS on the GPU, NVML metrics.
#     docker build -t search-app .
#     docker run --gpus all -p 8000:8000 -v hf-cache:/models -v search-data:/data \
#         search-app serve --model Qwen/Qwen2.5-7B-Instruct
#   cpu: llama.cpp (the embedded SmolLM2 default), FAISS on the CPU, the default
#     Wikipedia index, all offline; the install is scripts/setup.sh, the same commands
#     CI runs on every commit outside Docker.
#     docker build --target cpu -t search-app:cpu .
#     docker run -p 8000:8000 -v search-data:/data search-app:cpu
#
# Both run as an unprivileged user, keep models and data on volumes, and report
# health on /health. compose.yaml and deploy/kubernetes/ use them; docs/deploy.md.

# --- CPU -----------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS cpu
# Unpinned on purpose: Debian stable's point releases carry security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git curl \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 app
WORKDIR /opt/search-app
COPY --chown=app:app . .
USER 10001
# The image builds for a generic x86-64 CPU, never with AMX kernels (see
# docs/deployment.md); no chromium (tests only); the index is built into the image.
ENV CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" \
    SEARCH_APP_SKIP_CHROMIUM=1 \
    SEARCH_APP_SKIP_SERVERS=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN bash scripts/setup.sh
ENV PATH=/opt/search-app/.venv/bin:$PATH \
    SEARCH_APP_HOST=0.0.0.0 \
    SEARCH_APP_PORT=8000 \
    SEARCH_APP_ENGINE=llamacpp \
    SEARCH_APP_MODELS_DIR=/models \
    SEARCH_APP_DEFAULT_MODEL_COPY_DIR=/opt/search-app/data/models \
    SEARCH_APP_STORE_PATH=/data/store.sqlite \
    HF_HUB_OFFLINE=1
VOLUME ["/data", "/models"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["search-app"]
CMD ["serve"]

# --- GPU (default) ---------------------------------------------------------------------
# The base image brings vLLM and its matching CUDA build of torch, so the project is
# installed on top without touching torch.
FROM vllm/vllm-openai:v0.33.0 AS gpu
RUN useradd --create-home --uid 10001 app \
    && mkdir -p /data /models \
    && chown app:app /data /models
WORKDIR /opt/search-app
COPY pyproject.toml README.md ./
COPY search_app ./search_app
COPY serving ./serving
COPY retrieval ./retrieval
COPY evals ./evals
COPY ui ./ui
# The project itself (pinned by this commit); its dependencies are pinned in pyproject.
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir ".[gpu]"
USER 10001
ENV SEARCH_APP_HOST=0.0.0.0 \
    SEARCH_APP_PORT=8000 \
    SEARCH_APP_ENGINE=vllm \
    SEARCH_APP_DATA_DIR=/data \
    SEARCH_APP_MODELS_DIR=/models \
    HF_HOME=/models/huggingface
VOLUME ["/data", "/models"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["search-app"]
CMD ["serve"]
