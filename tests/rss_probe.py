"""Run concurrent jobs of large 16-bit grayscale PNGs through a worker in a fresh process and
print its peak RSS as JSON (run by test_memory.py; a process of its own measures cleanly).

python tests/rss_probe.py MODEL_DIR JOBS IMAGES_PER_JOB SIDE [SETTING=VALUE ...]
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import resource
import sys

import numpy as np
from PIL import Image

from vision_worker.settings import load_settings
from vision_worker.worker import Worker


def sixteen_bit_png(side: int) -> str:
    """A side x side 16-bit gradient: ~90 KB of PNG for 6300 x 6300, 79 MB of pixels."""
    gradient = (np.arange(side, dtype=np.uint32) * 65535 // side).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(np.broadcast_to(gradient, (side, side)).copy()).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    model, jobs, per_job, side = sys.argv[1], *map(int, sys.argv[2:5])
    settings = dict(arg.split("=", 1) for arg in sys.argv[5:])
    image = sixteen_bit_png(side)
    worker = Worker.start(load_settings(MODEL_NAME=model, WARMUP=False, **settings))
    idle = peak_mib()

    async def all_jobs() -> list[dict]:
        return await asyncio.gather(
            *(worker.run({"images": [image] * per_job}) for _ in range(jobs))
        )

    outputs = asyncio.run(all_jobs())
    failed = [r for o in outputs for r in o.get("results", [o]) if "error" in r]
    print(
        json.dumps(
            {
                "idle_mib": idle,
                "peak_mib": peak_mib(),
                "failed": failed,
                "waits": worker.decode_budget.waits,
            }
        )
    )


if __name__ == "__main__":
    main()
