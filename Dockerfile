# cxr-serve: one trained run of cxr-studio behind an HTTP API (docs/serving.md). CPU TensorFlow.
# Build:  docker build -t cxr-serve .
# Run:    docker run -p 8080:8080 -e CXR_SERVE_API_KEYS=<key> cxr-serve
# Another run: mount its folder and name it, e.g.
#         docker run -p 8080:8080 -v "$PWD/models/MY-RUN:/app/models/MY-RUN:ro" -e CXR_SERVE_API_KEYS=<key> \
#           cxr-serve cxr-serve MY-RUN --host 0.0.0.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    CXR_STUDIO_RUNS=/app/models \
    PORT=8080

WORKDIR /app
# The pinned environment first, so a code change does not reinstall TensorFlow. The `tensorflow` wheel is the
# CPU build on Linux; the GPU one is the extra `.[gpu-tensorflow]`.
COPY requirements.txt pyproject.toml README.md ./
RUN pip install -r requirements.txt
COPY core ./core
COPY models ./models
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 10001 cxr
USER cxr

EXPOSE 8080
# Ready only once the model is loaded; urllib raises (exit 1) on a 503.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v1/health' % os.environ.get('PORT', '8080'), timeout=4)"
# Keys come from CXR_SERVE_API_KEYS (a secret), never from the image. The port is $PORT (Cloud Run sets it).
CMD ["cxr-serve", "starter-efficientnet-lite0", "--host", "0.0.0.0"]
