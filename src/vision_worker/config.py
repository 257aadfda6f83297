"""The worker's own settings, and the base of every task's limits.

Each field is an environment variable of the same name. A task declares its own limits (a
`TaskLimits` in its module); `settings.py` composes the two, validates them at start and is where
settings are read from.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_NAME = "nlpconnect/vit-gpt2-image-captioning"


# pydantic's boolean spellings.
_TRUE_WORDS = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE_WORDS = frozenset({"0", "off", "f", "false", "n", "no"})


class ConfigError(ValueError):
    """A setting is missing or out of range; raised at cold start, never per job."""


_FROM_ENVIRONMENT = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)


class TaskLimits(BaseSettings):
    """A task's own bounds and defaults (e.g. MAX_LABELS), declared in its module; each field is
    an environment variable, validated at start with the worker's settings."""

    model_config = _FROM_ENVIRONMENT


class TextLimits(TaskLimits):
    """Limits of every task that takes text from a job (prompts, questions, labels, texts)."""

    # Characters per label, text, prompt or question; the tokenizer truncates to the model's
    # context anyway.
    MAX_TEXT_CHARS: int = Field(1000, ge=1, le=100_000)


class Settings(BaseSettings):
    """The worker's settings (the served task's limits are its own: see TaskLimits)."""

    model_config = _FROM_ENVIRONMENT

    # --- model -------------------------------------------------------------------------------
    MODEL_NAME: str = Field(DEFAULT_MODEL_NAME, min_length=1)
    MODEL_REVISION: str | None = None
    # RunPod's cached models (a Hub cache layout the platform mounts); checked before the HF
    # cache and the Hub. See tasks/sources.py for the whole order.
    RUNPOD_MODEL_CACHE_DIR: str = "/runpod-volume/huggingface-cache/hub"
    # Where the image processor and tokenizer come from when MODEL_NAME has none (a fine-tuning
    # checkpoint): usually the base model's Hub id or directory. Empty means MODEL_NAME.
    PROCESSOR_NAME: str | None = Field("", validate_default=True)
    # Empty means "infer from the checkpoint" (see the README's architecture table); otherwise a
    # task name from the registry in tasks/, checked against what the checkpoint can serve.
    TASK: str = ""
    # "auto" picks cuda when torch sees a GPU, else cpu.
    DEVICE: str = "auto"
    # "auto" is float16 on CUDA (halves memory, tensor cores) and float32 on CPU
    # (CPU half-precision matmuls are slow or unsupported).
    DTYPE: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # Runs one dummy batch at cold start so the first real job does not pay for lazy init.
    WARMUP: bool = True
    # torch.compile the model at cold start. Measured on a 2-core CPU with ResNet-50: +2%
    # images/s for 53 s of extra cold start, so it is off by default; measure it on your GPU.
    TORCH_COMPILE: bool = False

    # The model's id on the OpenAI routes (/v1/models, "model" in requests); empty is MODEL_NAME.
    SERVED_MODEL_NAME: str = ""

    # --- batching and concurrency ---------------------------------------------------------------
    MAX_BATCH_SIZE: int = Field(16, ge=1, le=1024)
    # How long the oldest queued image may wait for companions before its batch runs.
    BATCH_WAIT_MS: float = Field(10.0, ge=0, le=10_000)
    # Jobs one worker accepts at once; images from all of them share batches.
    MAX_CONCURRENCY: int = Field(8, ge=1, le=1024)
    # Serverless: results stream as batches finish (/stream/{id}); /run and /runsync then return
    # the list of chunks instead of one output (RunPod aggregates a streaming handler's output).
    # Pod mode streams on /stream/{id} either way and keeps the one-output shape.
    STREAM_RESULTS: bool = False

    # --- input limits -----------------------------------------------------------------------------
    MAX_IMAGES_PER_JOB: int = Field(64, ge=1, le=10_000)
    # Encoded size of one image (after base64 decoding, or as downloaded).
    MAX_IMAGE_BYTES: int = Field(20 * 1024 * 1024, ge=1024)
    # Decoded size; checked from the header before any pixel is decoded (decompression bombs).
    MAX_IMAGE_PIXELS: int = Field(40_000_000, ge=64)
    # Longest side over shortest, checked from the header: a 1x6000 strip passes the pixel limit
    # but a shortest-edge resize makes it 1.3 billion pixels. 32:1 admits panoramas and receipts.
    MAX_ASPECT_RATIO: float = Field(32.0, ge=1.0, le=100_000)
    # Threads that download, decode and preprocess images. 0 = two per CPU core available to the
    # process, plus two (decoding keeps a core busy; downloads mostly wait).
    IMAGE_THREADS: int = Field(0, ge=0, le=256)
    # Scaled JPEG decoding (libjpeg decodes at 1/2, 1/4 or 1/8 scale in the DCT domain):
    # "true" only where answers stay the pipeline's (the decode keeps at least 8x the model's
    # input per side: a 12 MP photo decodes in full for 224-384 px models); "fast" as soon as the
    # model's input fits (a 12 MP photo for a 224 px model decodes 16x fewer pixels, scores move
    # by up to ~0.05, measured in the README); "false" always decodes in full.
    JPEG_DRAFT: Literal["true", "fast", "false"] = "true"
    # Decoded image memory in flight across all jobs (MiB); decodes wait for room. 0 = a quarter
    # of the container's memory limit (or the machine's memory), at least 512 MiB.
    DECODE_MEMORY_MB: int = Field(0, ge=0, le=1_000_000)
    # A total deadline for one download (connect + all reads), not a per-read timeout,
    # so a server that drips one byte a second cannot hold a job hostage.
    URL_TIMEOUT_S: float = Field(10.0, gt=0, le=300)
    URL_RETRIES: int = Field(2, ge=0, le=10)
    MAX_REDIRECTS: int = Field(5, ge=0, le=20)
    # Lifts the private/loopback/link-local address rule, for local testing only.
    ALLOW_PRIVATE_URLS: bool = False

    # --- outputs ---------------------------------------------------------------------------------
    # A job's output as JSON at most (MB): RunPod refuses larger payloads (/run 10 MB, /runsync
    # 20 MB), so a larger output fails the job with the fix named instead of being cut.
    MAX_OUTPUT_MB: float = Field(10.0, gt=0, le=10_000)
    # RunPod's bucket variables: when all three are set, output images (heatmaps) are uploaded
    # with the runpod SDK and returned as presigned URLs instead of inline data URIs.
    BUCKET_ENDPOINT_URL: str | None = None
    BUCKET_ACCESS_KEY_ID: str | None = None
    BUCKET_SECRET_ACCESS_KEY: str | None = None
    # The bucket to upload to; empty is the SDK's default (a bucket named for the month, MM-YY).
    BUCKET_NAME: str = ""

    # --- pod mode (HTTP server) -------------------------------------------------------------------
    # "serverless" (RunPod queue) or "pod" (HTTP server on PORT); one image serves both templates.
    SERVE_MODE: Literal["serverless", "pod"] = "serverless"
    HOST: str = "0.0.0.0"
    PORT: int = Field(8000, ge=1, le=65535)
    # RunPod load-balancing endpoints probe GET /ping on this port; 0 = the same as PORT.
    PORT_HEALTH: int = Field(0, ge=0, le=65535)
    # When set, every pod route but /health requires "Authorization: Bearer <key>".
    POD_API_KEY: str | None = None
    # Finished results are kept this long, within RESULT_STORE_MB of JSON (oldest out first).
    RESULT_TTL_S: float = Field(600.0, gt=0)
    RESULT_STORE_MB: int = Field(256, ge=1, le=1_000_000)
    # Jobs in flight at once over HTTP (/run, /runsync, /predict); beyond it, 429.
    MAX_STORED_RESULTS: int = Field(1000, ge=1)
    # Slow clients: seconds to send a request's headers (from its first byte, or from connecting),
    # then its body; open connections at once.
    HEADER_TIMEOUT_S: float = Field(10.0, gt=0, le=600)
    BODY_TIMEOUT_S: float = Field(120.0, gt=0, le=3600)
    # How long an idle keep-alive connection stays open after a response. It must outlast the
    # idle timeout of whatever reuses connections in front of the pod (httpx and Node drop theirs
    # at 5 s, load balancers and nginx at 60 s): a server that closes first races the client's
    # next request on that connection, which then fails unanswered. uvicorn's own 5 s equals
    # httpx's, which is that race.
    KEEP_ALIVE_S: float = Field(75.0, gt=0, le=3600)
    # A JSON request body (/run, /runsync, OpenAI routes): RunPod's own payload limit for
    # load-balancing endpoints (the queue's is 10 MB for /run, 20 MB for /runsync). Large files go
    # through /predict (multipart, up to MAX_IMAGES_PER_JOB files of MAX_IMAGE_BYTES) or as URLs.
    MAX_BODY_MB: float = Field(30.0, gt=0, le=100_000)
    # Memory all request bodies in flight may hold, process-wide, from their first byte to their
    # job's end (a JSON body reserves 6x its size while parsed, then what the parsed input
    # holds; an upload 2x its files): requests past it wait up to 10 s, then get 503.
    REQUEST_MEMORY_MB: int = Field(1024, ge=1, le=1_000_000)
    MAX_CONNECTIONS: int = Field(512, ge=1, le=100_000)
    # Seconds between the three tries of a /run job's webhook (RunPod's own interval is 10).
    WEBHOOK_RETRY_S: float = Field(10.0, ge=0, le=600)
    # After SIGTERM: how long results stay readable once the last job in flight has finished.
    SHUTDOWN_GRACE_S: float = Field(30.0, ge=0, le=3600)

    # RunPod's fitness check at start (serverless): below these the worker exits to be replaced.
    FITNESS_MIN_FREE_DISK_MB: int = Field(512, ge=0)
    FITNESS_MIN_FREE_MEMORY_MB: int = Field(512, ge=0)
    # Serverless mode: Prometheus metrics on this port (0 = off). Pod mode serves /metrics.
    METRICS_PORT: int = Field(0, ge=0, le=65535)

    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("JPEG_DRAFT", mode="before")
    @classmethod
    def _draft_mode(cls, value: object) -> object:
        # Every boolean spelling pydantic accepts (so JPEG_DRAFT=1, yes, on, t, y keep working).
        if isinstance(value, bool):
            return "true" if value else "false"
        text = str(value).strip().lower()
        if text in _TRUE_WORDS:
            return "true"
        return "false" if text in _FALSE_WORDS else text

    @field_validator("DEVICE")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value != "auto" and value.split(":")[0] not in {"cpu", "cuda", "mps"}:
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator(
        "MODEL_REVISION",
        "PROCESSOR_NAME",
        "POD_API_KEY",
        "BUCKET_ENDPOINT_URL",
        "BUCKET_ACCESS_KEY_ID",
        "BUCKET_SECRET_ACCESS_KEY",
    )
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("POD_API_KEY")
    @classmethod
    def _ascii_key(cls, value: str | None) -> str | None:
        # HTTP headers are Latin-1 on the wire: a non-ASCII key is accepted here but can never
        # match what a client sends.
        if value is not None and not (value.isascii() and value.isprintable()):
            raise ValueError("must be printable ASCII (it travels in an HTTP header)")
        return value
