"""Where settings are read: the worker's own (config.py) composed with every registered task's
limits (each task's module), read from the environment once and validated at start, so a bad
MAX_LABELS stops a classifier's cold start as surely as a bad MAX_BATCH_SIZE does."""

from __future__ import annotations

from functools import lru_cache

from pydantic import ValidationError

from .config import ConfigError, Settings, TaskLimits
from .tasks import TASKS


def _registered_limits() -> tuple[type[TaskLimits], ...]:
    """Each task's limits class once, most derived first (tasks share some, e.g. TextLimits)."""
    unique = dict.fromkeys(task.Limits for task in TASKS.values())
    return tuple(
        cls for cls in unique if not any(o is not cls and issubclass(o, cls) for o in unique)
    )


# The worker's settings and every task's limits in one validated model: the fields, defaults and
# bounds the README's configuration table and `.runpod/hub.json` are checked against.
ServingSettings: type[Settings] = type(
    "ServingSettings", (*_registered_limits(), Settings), {"__module__": __name__}
)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (overrides win), or a ConfigError naming each bad one."""
    try:
        return ServingSettings(**overrides)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
            for e in error.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def settings_from_env() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
