"""The served task's options as the pod's /predict form fields, their OpenAPI schema, and the
demo page that builds its form from them: one schema (the task's `Options`, with the limits in
force written in), so the form, the docs and JSON jobs cannot disagree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel


def demo_html(task: Any) -> str:
    """The demo page with the served task's options schema inlined (the page builds its form)."""
    described = {"name": task.name, "options": task.options_schema()}
    # "</" inside a <script> would end it; JSON allows the escaped form.
    inline = json.dumps(described).replace("</", "<\\/")
    return _DEMO_TEMPLATE.replace("__TASK__", inline)


_DEMO_TEMPLATE = (Path(__file__).parent / "static" / "demo.html").read_text()


def form_options(options_model: type[BaseModel], form: Any, query: Any) -> dict[str, Any]:
    """The task options in a multipart form or the query string, as a JSON job would carry them.

    Form values are strings: each is read as JSON when it parses ("3" -> 3, "true" -> True,
    '["cat", "dog"]' -> a list) and as text otherwise; a list option may also repeat its field.
    The job's own validation then applies, so errors read the same as for JSON jobs.
    """
    options: dict[str, Any] = {}
    for source in (query, form):
        for key in {k for k in source if k != "image"}:
            values = [v for v in source.getlist(key) if isinstance(v, str)]
            if key in options:
                raise ValueError(f'option "{key}" is given twice (query string and form)')
            field = options_model.model_fields.get(key)
            is_list = field is not None and "list" in str(field.annotation)
            if is_list and len(values) > 1:
                options[key] = values
            elif values:
                options[key] = _form_value(values[-1], is_list)
    return options


def _form_value(text: str, is_list: bool) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return [text] if is_list else text
    return [value] if is_list and isinstance(value, str) else value


def predict_form_schema(task: Any, max_images: int | None = None) -> dict[str, Any]:
    """OpenAPI for /predict: the image files (1 to `max_images`, MAX_IMAGES_PER_JOB; more is a
    413) plus the served task's options as form fields."""
    properties: dict[str, Any] = {
        "image": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "minItems": 1,  # none is a 400
            "description": "One or more image files.",
        },
    }
    if max_images is not None:
        properties["image"]["maxItems"] = max_images
    for name, schema in task.options_schema()["properties"].items():
        properties[name] = schema
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": properties,
                        "additionalProperties": False,  # an unknown field is a 400
                    }
                }
            },
        }
    }
