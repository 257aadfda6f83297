"""The Docker image as far as a machine without Docker can check it: every COPY source is in
the build context, the image runs the torch the tests run, and the Dockerfile's RUN steps and
CMD, replayed in a fresh virtual environment, serve test_input.json offline from a baked cache."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with line continuations joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [line.strip() for line in joined.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def excluded_by_dockerignore(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
        for pattern in patterns
        for prefix in prefixes
    )


def test_every_copy_source_is_in_the_build_context():
    copies = [args for name, args in instructions() if name == "COPY"]
    assert copies
    for args in copies:
        *sources, _destination = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            assert not excluded_by_dockerignore(source.rstrip("/")), f"{source} is .dockerignored"


def pinned(path: str, package: str) -> str:
    text = (ROOT / path).read_text()
    return re.search(rf"^{package}==([\w.]+)$", text, re.MULTILINE).group(1)


def test_the_image_runs_the_torch_and_torchvision_the_tests_run():
    import torchvision

    for package, installed in (
        ("torch", torch.__version__),
        ("torchvision", torchvision.__version__),
    ):
        pin = pinned("builder/torch.txt", package)
        assert installed.split("+")[0] == pin, f"tests run another {package} than the pin"
    assert "-r builder/torch.txt" in (ROOT / "requirements-dev.txt").read_text()
    runs = [args for name, args in instructions() if name == "RUN"]
    (torch_install,) = [r for r in runs if "builder/torch.txt" in r]
    assert "-r builder/torch.txt" in torch_install
    assert "torchvision" not in torch_install  # pinned once, in builder/torch.txt
    # By default the same index the tests install from (PyPI: the same CUDA 13.0 wheel).
    assert re.search(r"^ARG TORCH_INDEX=https://pypi.org/simple$", DOCKERFILE, re.MULTILINE)
    base = re.search(r"^FROM python:(\d+\.\d+)", DOCKERFILE, re.MULTILINE).group(1)
    assert base == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_the_pinned_transformers_accepts_the_pinned_torch():
    import transformers
    from packaging.specifiers import SpecifierSet
    from transformers.dependency_versions_table import deps

    if transformers.__version__ != pinned("builder/requirements.txt", "transformers"):
        pytest.skip("installed transformers is not the pinned one")
    torch_spec = SpecifierSet(deps["torch"].removeprefix("torch"))
    assert pinned("builder/torch.txt", "torch") in torch_spec


def bake_into_hf_cache(model: Path, hf_home: Path, repo_id: str) -> None:
    """The layout builder/download_model.py leaves: hub/models--org--name/snapshots/<rev>."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    shutil.copytree(model, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)


@pytest.fixture
def fresh_venv(tmp_path: Path) -> Iterator[Path]:
    """A new venv, removed afterwards pass or fail: with torch in it, it is 6 GB, and pytest
    keeps the last runs' temporary directories, so a few CI runs would fill the disk."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    yield venv
    shutil.rmtree(venv, ignore_errors=True)


@pytest.mark.timeout(900)
def test_the_dockerfile_replayed_in_a_fresh_venv_serves_test_input_offline(
    model_dir, tmp_path, fresh_venv
):
    """RUN steps in order in a new venv of the base image's Python, with one substitution this
    machine needs: torch and torchvision from the default index (the same wheels, from this
    machine's local copy of PyPI). The weights step is replaced by the cache layout it
    produces. The log names the torchvision-backed image processor: production's path."""
    venv = fresh_venv
    python = str(venv / "bin" / "python")
    environment = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for name, args in instructions():
        if name != "RUN" or "download_model.py" in args:
            continue
        command = args.replace('--index-url "${TORCH_INDEX}" ', "")
        command = command.replace("pip install", f"{python} -m pip install --quiet")
        done = subprocess.run(
            command, shell=True, cwd=ROOT, env=environment, capture_output=True, text=True
        )
        assert done.returncode == 0, f"RUN {args}\n{done.stderr[-3000:]}"

    hf_home = tmp_path / "huggingface"
    bake_into_hf_cache(model_dir("vit-gpt2"), hf_home, "tiny/vit-gpt2")
    image_env = {
        **environment,
        "HF_HOME": str(hf_home),
        "MODEL_NAME": "tiny/vit-gpt2",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    image_env.pop("VIRTUAL_ENV", None)
    workdir = tmp_path / "app"  # only what COPY puts in /app: handler.py and test_input.json
    workdir.mkdir()
    for name in ("handler.py", "test_input.json"):
        shutil.copy(ROOT / name, workdir / name)
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.MULTILINE).group(1))
    cmd[0] = python
    done = subprocess.run(
        cmd, cwd=workdir, env=image_env, capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "'caption':" in output or '"caption":' in output, output[-3000:]
    assert "image processor ViTImageProcessor," in output, output[-3000:]
