"""vision-worker: Hugging Face vision models behind a batched RunPod serverless handler."""

__version__ = "0.1.0"
