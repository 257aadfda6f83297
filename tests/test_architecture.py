"""The package's shape, checked: no import cycles (function-level imports included), the edges
(serverless handler, pod server and process, local run, fitness check) use the Worker's face,
never its parts, and the model thread runs forward passes only."""

from __future__ import annotations

import ast
import re
import threading
import time
from pathlib import Path

import pytest

from conftest import b64, photo, run_job

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "vision_worker"
EDGES = ("server.py", "starting.py", "serverless.py", "fitness.py", "local.py")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports anywhere in its body."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in modules and c != name}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = list(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    return {_module_name(p): _imports(p, modules) for p in paths}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[node], _ = "done", stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_is_found():
    graph = import_graph()
    assert "vision_worker.server" in graph["vision_worker.starting"]
    assert "vision_worker.worker" in graph["vision_worker.server"]


def test_no_module_imports_itself_back():
    graph = import_graph()
    # A module importing its own package (__init__) is how submodules share a registry, not a
    # cycle between stages.
    cycle = _cycle(
        {
            module: {t for t in targets if not _is_parent_package(t, module)}
            for module, targets in graph.items()
        }
    )
    assert cycle is None, " -> ".join(cycle or [])


def _is_parent_package(target: str, module: str) -> bool:
    return module.startswith(target + ".")


def test_the_edges_use_the_workers_face_not_its_parts():
    reaching_in = re.compile(r"worker\.(loader|batcher|task\.source)\b")
    for name in EDGES:
        text = (PACKAGE / name).read_text()
        assert not reaching_in.search(text), f"{name} reaches into the worker"
    assert not reaching_in.search((ROOT / "handler.py").read_text())


@pytest.mark.parametrize(
    ("arch", "owner", "post_processing", "job"),
    [
        ("detr", "image_processor", "post_process_object_detection", {}),
        ("owlvit", "image_processor", "post_process_object_detection", {"labels": ["a cat"]}),
        ("vit-gpt2", "tokenizer", "batch_decode", {}),
        ("llava", "processor", "post_process_image_text_to_text", {"question": "what?"}),
    ],
)
def test_only_forward_passes_run_on_the_model_thread(
    make_worker, monkeypatch, arch, owner, post_processing, job
):
    worker = make_worker(arch)
    target = getattr(worker.task, owner)
    original = getattr(target, post_processing)
    threads: list[str] = []

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, post_processing, recording)
    output = run_job(worker, {"image": b64(photo("chelsea")), **job})
    assert "error" not in output["results"][0], output
    assert threads, f"{post_processing} did not run"
    assert all(name.startswith("split") for name in threads), threads


@pytest.mark.parametrize(
    ("arch", "job"),
    [
        ("detr", {}),
        ("owlvit", {"labels": ["a cat"]}),
        ("vit-gpt2", {}),
        ("llava", {"question": "what?"}),
    ],
)
def test_batches_are_collated_off_the_model_thread(make_worker, monkeypatch, arch, job):
    """While the model runs a batch, the next one's stacking, padding, label tokens and copies
    to the device run on the collate thread, so it is ready when the model is. (A batch for an
    idle model is collated on the model thread, just before its pass.)"""
    worker = make_worker(arch, MAX_BATCH_SIZE=1)
    collate, forward = worker.batcher._collate, worker.batcher._run_batch
    threads: list[str] = []

    def recording(items, options):
        threads.append(threading.current_thread().name.split("_")[0])
        return collate(items, options)

    passes: list[int] = []

    def slow(batch, options):
        """The model stays busy until the next batch has started collating (or 30 s passed),
        however slowly a loaded machine prepares it: no race against a fixed sleep."""
        passes.append(1)
        deadline = time.monotonic() + 30
        while len(threads) < min(len(passes) + 1, 3) and time.monotonic() < deadline:
            time.sleep(0.01)
        return forward(batch, options)

    monkeypatch.setattr(worker.batcher, "_collate", recording)
    monkeypatch.setattr(worker.batcher, "_run_batch", slow)
    images = [b64(photo(name)) for name in ("chelsea", "coffee", "astronaut")]
    output = run_job(worker, {"images": images, **job})
    assert all("error" not in result for result in output["results"]), output
    # The first batch found the model idle; the other two came while it ran. (Recorded as
    # each collate starts: the first may start after the second's.)
    assert sorted(threads) == ["collate", "collate", "model"], threads
