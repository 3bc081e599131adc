# search-app GPU image: vLLM (CUDA) in-process, FAISS on the GPU, NVML metrics.
#
#   docker build -t search-app .
#   docker run --gpus all -p 8000:8000 -v $HOME/.cache/huggingface:/root/.cache/huggingface \
#       search-app serve --model Qwen/Qwen2.5-7B-Instruct
#
# The base image brings vLLM and its matching CUDA build of torch, so the project is
# installed on top without touching torch. The CPU image and scale-out are described in
# docs/deployment.md.
FROM vllm/vllm-openai:v0.33.0

WORKDIR /opt/search-app
COPY pyproject.toml README.md ./
COPY search_app ./search_app
COPY serving ./serving
COPY retrieval ./retrieval
COPY evals ./evals
COPY ui ./ui
RUN python3 -m pip install --no-cache-dir ".[gpu]"

ENV SEARCH_APP_HOST=0.0.0.0 \
    SEARCH_APP_PORT=8000 \
    SEARCH_APP_ENGINE=vllm \
    SEARCH_APP_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s \
    CMD python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health').status != 200)"
ENTRYPOINT ["search-app"]
CMD ["serve"]
