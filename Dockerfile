# vision-worker: one image for RunPod serverless endpoints and pod templates.
#
#   docker build --build-arg MODEL_NAME=nlpconnect/vit-gpt2-image-captioning -t you/vision-worker .
#
# Base: the official PyTorch runtime image with CUDA 12.4 and cuDNN 9. CUDA 12.4 runs on every
# GPU RunPod rents today (driver >= 550 on their hosts), the runtime flavour skips compilers,
# and torch comes prebuilt for it, so pip never downloads a multi-GB CUDA wheel here.
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models/huggingface \
    MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=4194304

WORKDIR /app

# Dependencies first: this layer is reused until builder/requirements.txt changes.
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
