"""The tiny builders by family; `vision_worker.dev.tiny_models` is their registry and CLI."""
