# vision-worker: one image for RunPod serverless endpoints and pod templates.
#
#   docker build --build-arg MODEL_NAME=nlpconnect/vit-gpt2-image-captioning -t you/vision-worker .
#
# Base: plain Python 3.11 (the version the tests run), with torch and torchvision installed at the
# exact versions the tests pin (builder/torch.txt). By default they come from PyPI, whose torch
# 2.14.1 wheel is the CUDA 13.0 build: byte for byte the wheel the test suite runs (on the CPU),
# with its own CUDA runtime and cuDNN; the host brings only the driver, R580 or newer. On
# RunPod, allow CUDA 13.0 in the endpoint's or pod's CUDA filter. For hosts with an older driver,
# build the same release from PyTorch's CUDA 12.8 index (R570+; Blackwell kernels included):
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
# Expected size: ~6.5 GB unpacked (~3.5 GB pushed), before weights.
FROM python:3.11.14-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models/huggingface \
    MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=4194304

WORKDIR /app

# torch first: the largest layer, reused until its pin changes. torchvision gives transformers'
# fast (torchvision) image processors, which is what the tests check.
ARG TORCH_INDEX=https://pypi.org/simple
COPY builder/torch.txt builder/torch.txt
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" -r builder/torch.txt

# Then the other dependencies: reused until builder/requirements.txt changes.
COPY builder/requirements.txt builder/requirements.txt
RUN pip install --no-cache-dir -r builder/requirements.txt

# Weights next, so a code change does not re-download them. An empty MODEL_NAME bakes nothing:
# the model then comes from the Hub or a network volume (set HF_HOME=/runpod-volume/...).
ARG MODEL_NAME=nlpconnect/vit-gpt2-image-captioning
ARG MODEL_REVISION=
COPY builder/download_model.py builder/download_model.py
RUN python builder/download_model.py "${MODEL_NAME}" --revision "${MODEL_REVISION}"

# A baked image never touches the network at cold start; an unbaked one must reach the Hub.
ENV MODEL_NAME=${MODEL_NAME} \
    MODEL_REVISION=${MODEL_REVISION} \
    HF_HUB_OFFLINE=${MODEL_NAME:+1}

COPY pyproject.toml README.md ./
COPY src/ src/
RUN pip install --no-cache-dir --no-deps .
COPY handler.py test_input.json ./

# Pod templates expose this port when SERVE_MODE=pod; serverless endpoints ignore it.
EXPOSE 8000
CMD ["python", "-u", "handler.py"]
