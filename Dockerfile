# vision-worker: one image for RunPod serverless endpoints and pod templates.
#
#   docker build --build-arg MODEL_NAME=nlpconnect/vit-gpt2-image-captioning -t you/vision-worker .
#
# Base: plain Python 3.11 (the version the tests run), with torch installed from PyTorch's CUDA
# 12.8 wheel index at the exact version the tests pin (builder/torch.txt), so the image runs the
# torch the test suite ran. The wheels bring their own CUDA runtime and cuDNN; the host brings
# only the driver. CUDA 12.8 because it is the first with Blackwell kernels (B200, RTX 5090) and,
# through CUDA's minor-version compatibility, still runs on every R525+ driver RunPod's older
# hosts have (A100, H100, L4, RTX 4090, A4000...). Expected size: ~6.5 GB unpacked (~3.5 GB
# pushed), before weights; the former pytorch/pytorch runtime base was ~7.5 GB.
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
# fast image processors; 0.28 is the release built for torch 2.13.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
COPY builder/torch.txt builder/torch.txt
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" -r builder/torch.txt torchvision==0.28.0

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
