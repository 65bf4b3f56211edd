# DecAF Label Studio ML backend. Build from the repo root:
#   docker build -t decaf-backend .                                   # CUDA-enabled torch from PyPI (runs on CPU too)
#   docker build -t decaf-backend --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .   # smaller, CPU only
# Run: cd docker && ./make-env.sh > .env && docker compose up  (see README "Docker")
FROM python:3.11-slim

ARG TORCH_INDEX=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    MODEL_DIR=/data HF_HOME=/data/huggingface PORT=9090 HOST=0.0.0.0

# ffmpeg libraries come with the av wheel; build-essential is needed by sam2's sdist (no CUDA extension built)
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN if [ -n "$TORCH_INDEX" ]; then pip install --index-url "$TORCH_INDEX" torch==2.14.1 torchvision==0.29.1; \
    else pip install torch==2.14.1 torchvision==0.29.1; fi \
 && pip install -r requirements.txt \
 && SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0

COPY pyproject.toml ./
COPY decaf_backend ./decaf_backend
COPY label_config ./label_config
RUN pip install --no-deps . && useradd --create-home --uid 1000 decaf && mkdir -p /data && chown decaf /data
USER decaf
VOLUME /data
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\",\"9090\")}/health', timeout=2)"
# listens on 0.0.0.0: refuses to start without BASIC_AUTH_USER/BASIC_AUTH_PASS (docs/security.md)
CMD ["python", "-m", "decaf_backend", "serve"]
