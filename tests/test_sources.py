"""MODEL_NAME resolved in the documented order; a model found on disk never touches the Hub."""

from __future__ import annotations

import logging
import shutil

import pytest

from vision_worker.settings import load_settings
from vision_worker.tasks import load_task
from vision_worker.tasks.sources import resolve_model

SNAPSHOT = "a" * 40


def lay_out_as_hub_cache(model, root, repo_id: str, snapshot: str = SNAPSHOT, ref="main"):
    """The layout RunPod's cached models and huggingface_hub both use."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model, repo / "snapshots" / snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(snapshot)
    return repo / "snapshots" / snapshot


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to reach the Hub fails the test."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the Hub was contacted for a model on disk")

    monkeypatch.setattr("vision_worker.tasks.base._hub_reachable", refuse)
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def test_a_runpod_cached_model_loads_offline_from_its_snapshot(model_dir, tmp_path, no_hub, caplog):
    root = tmp_path / "huggingface-cache" / "hub"
    snapshot = lay_out_as_hub_cache(model_dir("clip"), root, "openai/tiny-clip")
    caplog.set_level(logging.INFO)
    task = load_task(load_settings(MODEL_NAME="openai/tiny-clip", RUNPOD_MODEL_CACHE_DIR=str(root)))
    assert task.name == "zero_shot"
    assert task.source.name == str(snapshot)
    assert "model openai/tiny-clip from the RunPod cached model" in caplog.text


def test_model_revision_picks_the_snapshot_its_ref_names(model_dir, tmp_path):
    root = tmp_path / "hub"
    lay_out_as_hub_cache(model_dir("resnet"), root, "org/model")
    v2 = lay_out_as_hub_cache(model_dir("vit"), root, "org/model", snapshot="b" * 40, ref="v2")
    assert resolve_model("org/model", "v2", str(root)).location == str(v2)
    assert resolve_model("org/model", "b" * 40, str(root)).location == str(v2)  # a commit hash
    assert resolve_model("org/model", "v3", str(root)).origin == "Hugging Face Hub"


def test_the_hugging_face_cache_under_hf_home_comes_next(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snapshot = lay_out_as_hub_cache(model_dir("vit"), tmp_path / "hf" / "hub", "org/baked")
    found = resolve_model("org/baked", None, str(tmp_path / "no-runpod-cache"))
    assert (found.origin, found.location) == ("Hugging Face cache (HF_HOME)", str(snapshot))
    assert found.on_disk


def test_a_local_directory_wins_and_unknown_ids_go_to_the_hub(model_dir, tmp_path):
    assert resolve_model(str(model_dir("vit")), None, str(tmp_path)).origin == "local directory"
    hub = resolve_model("org/not-here", None, str(tmp_path))
    assert (hub.origin, hub.location, hub.on_disk) == ("Hugging Face Hub", "org/not-here", False)
