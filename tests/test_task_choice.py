"""Which task a checkpoint serves, decided from the checkpoint; never a random head."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_job
from vision_worker.settings import load_settings
from vision_worker.tasks import TASKS, ModelLoadError, load_task
from vision_worker.worker import Worker


@pytest.mark.parametrize(
    ("arch", "default", "serves"),
    [
        ("vit-gpt2", "caption", ["caption"]),
        ("git", "caption", ["caption"]),
        ("blip", "caption", ["caption"]),
        ("vit", "classify", ["classify", "embed"]),
        ("resnet", "classify", ["classify", "embed"]),
        ("clip", "zero_shot", ["zero_shot", "embed"]),
        ("siglip", "zero_shot", ["zero_shot", "embed"]),
        ("siglip2", "zero_shot", ["zero_shot", "embed"]),
        ("dinov2", "embed", ["embed"]),
        ("vit-backbone", "embed", ["embed"]),
        ("yolos", "detect", ["detect", "embed"]),
    ],
)
def test_the_default_task_comes_from_the_checkpoint(arch, default, serves, model_dir):
    from transformers import AutoConfig

    from vision_worker.tasks import Checkpoint, choose_task, tasks_serving

    checkpoint = Checkpoint.from_config(arch, AutoConfig.from_pretrained(model_dir(arch)))
    assert choose_task(checkpoint).name == default
    assert tasks_serving(checkpoint) == serves
    for task in serves:  # TASK may pick any task the checkpoint serves
        assert choose_task(checkpoint, task).name == task


@pytest.mark.parametrize(
    ("arch", "task", "message"),
    [
        (
            "clip",
            "classify",
            r"TASK=classify does not fit .*CLIPModel.*; it serves zero_shot, embed",
        ),
        ("dinov2", "classify", r"TASK=classify does not fit .*Dinov2Model.*; it serves embed"),
        ("dinov2", "zero_shot", r"TASK=zero_shot does not fit .*; it serves embed"),
        ("vit", "caption", r"it serves classify, embed"),
        ("donut", "caption", r"TASK=caption does not fit .*EncoderDecoderModel.*; it serves ocr"),
        (
            "clip",
            "transcribe",
            r"TASK=transcribe is not a task; known tasks: ocr, caption, florence, ask, classify",
        ),
    ],
)
def test_a_task_the_checkpoint_cannot_serve_stops_cold_start(arch, task, message, model_dir):
    with pytest.raises(ModelLoadError, match=message):
        load_task(load_settings(MODEL_NAME=str(model_dir(arch)), TASK=task))


def test_a_checkpoint_claiming_a_head_it_does_not_have_refuses_to_start(model_dir, tmp_path):
    """A config that says ViTForImageClassification over headless weights: transformers would
    fill the head with random numbers and serve confident nonsense labels."""
    headless = tmp_path / "headless"
    shutil.copytree(model_dir("vit-backbone"), headless)
    config = json.loads((headless / "config.json").read_text())
    config |= {"architectures": ["ViTForImageClassification"], "id2label": {"0": "a", "1": "b"}}
    (headless / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as refused:
        load_task(load_settings(MODEL_NAME=str(headless)))
    message = str(refused.value)
    assert "has no classification head (weights missing: classifier.bias, classifier.weight)" in (
        message
    )
    assert message.endswith("it serves embed: set TASK=embed")
    # The same checkpoint serves embeddings when asked to.
    assert load_task(load_settings(MODEL_NAME=str(headless), TASK="embed")).name == "embed"


def test_cold_start_refusal_is_one_line_from_the_handler(model_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "MODEL_NAME": str(model_dir("clip")), "TASK": "classify"}
    done = subprocess.run(
        [sys.executable, "handler.py"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("vision-worker cannot start: TASK=classify does not fit")
    assert "Traceback" not in done.stderr


def _strip_processor(source, target) -> None:
    """A training checkpoint: config and weights only, no processor or tokenizer files."""
    target.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (source / name).exists():
            shutil.copy(source / name, target / name)


@pytest.mark.parametrize("arch", ["vit-gpt2", "clip"])
def test_fine_tuned_checkpoint_takes_its_processor_from_processor_name(
    arch, model_dir, tmp_path, photos_b64
):
    checkpoint = tmp_path / "checkpoint-500"
    _strip_processor(model_dir(arch), checkpoint)
    with pytest.raises(ModelLoadError, match="set PROCESSOR_NAME to the base model"):
        load_task(load_settings(MODEL_NAME=str(checkpoint)))
    worker = Worker.start(
        load_settings(MODEL_NAME=str(checkpoint), PROCESSOR_NAME=str(model_dir(arch)), WARMUP=False)
    )
    job = {"image": photos_b64[0]} | ({"labels": ["cat", "dog"]} if arch == "clip" else {})
    output = run_job(worker, job)
    assert "error" not in output["results"][0], output


def test_every_registered_task_documents_its_options():
    for task in TASKS.values():
        assert task.summary
        assert task.architectures_doc
        for name, field in task.Options.model_fields.items():
            assert field.description, f"{task.name}.{name} has no description"
