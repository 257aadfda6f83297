"""builder/ scripts run directly: the Docker build calls exactly these."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vision_worker.config import DEFAULT_MODEL_NAME

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("download_model", ROOT / "builder/download_model.py")
download_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(download_model)

SAFETENSORS_REPO = [
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "tf_model.h5",
    "flax_model.msgpack",
    "preprocessor_config.json",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "README.md",
    "images/example.jpg",
]
BIN_ONLY_REPO = ["config.json", "pytorch_model.bin", "tf_model.h5", "vocab.json"]


def _fetched(repo_files: list[str], patterns: list[str]) -> set[str]:
    from fnmatch import fnmatch

    return {f for f in repo_files if any(fnmatch(f, p) for p in patterns)}


def test_only_inference_files_are_fetched_preferring_safetensors():
    fetched = _fetched(SAFETENSORS_REPO, download_model.inference_patterns(SAFETENSORS_REPO))
    assert fetched == {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
    }


def test_pytorch_bin_is_fetched_when_a_repo_has_no_safetensors():
    fetched = _fetched(BIN_ONLY_REPO, download_model.inference_patterns(BIN_ONLY_REPO))
    assert fetched == {"config.json", "pytorch_model.bin", "vocab.json"}


def test_a_repo_without_pytorch_weights_is_refused():
    with pytest.raises(SystemExit, match="no safetensors or pytorch weights"):
        download_model.inference_patterns(["config.json", "tf_model.h5"])


def test_bake_calls_the_hub_with_revision_and_patterns():
    calls = {}

    def list_files(repo, revision):
        calls["list"] = (repo, revision)
        return SAFETENSORS_REPO

    def download(repo, revision, allow_patterns):
        calls["download"] = (repo, revision, tuple(allow_patterns))
        return "/models/huggingface/hub/models--org--name/snapshots/abc"

    path = download_model.bake("org/name", "v1.0", list_files=list_files, download=download)
    assert path.endswith("snapshots/abc")
    assert calls["list"] == ("org/name", "v1.0")
    assert calls["download"][:2] == ("org/name", "v1.0")
    assert "*.safetensors" in calls["download"][2]
    assert "pytorch_model*.bin" not in calls["download"][2]


def test_a_local_checkpoint_is_checked_not_downloaded(model_dir, tmp_path):
    assert download_model.bake(str(model_dir("resnet")), None) == str(model_dir("resnet"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="missing weights"):
        download_model.bake(str(tmp_path), None)


def test_script_runs_from_the_command_line_and_empty_name_bakes_nothing(model_dir):
    script = str(ROOT / "builder/download_model.py")
    local = subprocess.run(
        [sys.executable, script, str(model_dir("vit"))], capture_output=True, text=True, check=True
    )
    assert "baked" in local.stdout
    empty = subprocess.run(
        [sys.executable, script, "", "--revision", ""], capture_output=True, text=True, check=True
    )
    assert "nothing baked" in empty.stdout


def test_dockerfile_defaults_match_the_config_module():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG MODEL_NAME={DEFAULT_MODEL_NAME}\n" in dockerfile
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim-\w+$", dockerfile, re.M)  # tag pinned
    assert 'CMD ["python", "-u", "handler.py"]' in dockerfile


def test_every_runtime_dependency_is_pinned_and_torch_is_not():
    lines = [
        line.split("#")[0].strip()
        for line in (ROOT / "builder/requirements.txt").read_text().splitlines()
    ]
    pins = [line for line in lines if line]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", pin) for pin in pins), pins
    names = {pin.split("==")[0].lower() for pin in pins}
    assert "torch" not in names
    assert {"runpod", "transformers", "pillow", "requests", "pydantic"} <= names


def test_runpod_hub_metadata_matches_the_config_defaults():
    import json

    from vision_worker.settings import ServingSettings as Settings

    hub = json.loads((ROOT / ".runpod/hub.json").read_text())
    assert {"title", "description", "type", "category", "config"} <= set(hub)
    assert (hub["type"], hub["category"], hub["config"]["runsOn"]) == ("serverless", "image", "GPU")
    for entry in hub["config"]["env"]:
        default = entry["input"]["default"]
        assert default == Settings.model_fields[entry["key"]].default, entry["key"]
    for preset in hub["config"]["presets"]:
        assert set(preset["defaults"]) <= set(Settings.model_fields)


def test_runpod_hub_listing_is_rendered_from_the_registry_and_settings():
    """Presets, the TASK menu and every default come from the tasks and settings, so adding a
    task is `python -m vision_worker.docs README.md .runpod/hub.json`, not hand edits."""
    import json

    from vision_worker.docs import render_hub

    hub = json.loads((ROOT / ".runpod/hub.json").read_text())
    assert render_hub(hub) == hub, (
        "hub.json drifted: run python -m vision_worker.docs README.md .runpod/hub.json"
    )


def test_runpod_cuda_filters_admit_only_hosts_the_image_s_torch_runs_on():
    """The image installs builder/torch.txt from PyPI: its CUDA build (13.0 for torch 2.14.1)
    needs a host driver of that CUDA version or newer; RunPod filters hosts by it."""
    import json

    import torch

    built_for = tuple(int(part) for part in torch.version.cuda.split(".")[:2])
    for listing in (".runpod/hub.json", ".runpod/tests.json"):
        allowed = json.loads((ROOT / listing).read_text())["config"]["allowedCudaVersions"]
        versions = [tuple(int(part) for part in v.split(".")) for v in allowed]
        assert versions, listing
        assert all(v >= built_for for v in versions), (listing, allowed)


def test_runpod_hub_tests_are_jobs_the_worker_completes(make_worker):
    import json

    from conftest import run_job

    tests = json.loads((ROOT / ".runpod/tests.json").read_text())
    assert tests["tests"]
    for case in tests["tests"]:
        output = run_job(make_worker("vit-gpt2"), case["input"])
        assert "error" not in output, output
        assert "caption" in output["results"][0]


def test_runpod_hub_offers_exactly_the_registered_tasks():
    import json

    from vision_worker.tasks import TASKS

    hub = json.loads((ROOT / ".runpod/hub.json").read_text())
    (task_setting,) = [e for e in hub["config"]["env"] if e["key"] == "TASK"]
    assert [o["value"] for o in task_setting["input"]["options"]] == ["", *TASKS]


def test_readme_task_reference_is_rendered_from_the_registry():
    from vision_worker.docs import render_tasks

    assert render_tasks() in (ROOT / "README.md").read_text(), (
        "README's task reference drifted: run python -m vision_worker.docs README.md"
    )
