"""Settings <-> environment variables: how the stack and the tests configure worker subprocesses.

`settings_to_env(settings)` is the inverse of `Settings()` reading `EMOSTREAM_*` variables: nested
sections join with `__`, e.g. `EMOSTREAM_KAFKA__BOOTSTRAP_SERVERS`, `EMOSTREAM_TOPICS__AUDIO`.
Only values that differ from the model's defaults are written (the child's own defaults supply the
rest), and `child_environment` drops every inherited settings variable first, so a child sees
exactly the parent's Settings object, not a mix with the parent's shell.
"""

import os
from collections.abc import Mapping
from enum import Enum
from typing import Any

from emostream.schemas.settings import Settings
from pydantic import BaseModel, SecretStr

__all__ = ["ENV_PREFIX", "child_environment", "is_settings_variable", "settings_to_env"]

ENV_PREFIX = "EMOSTREAM_"
NESTED_DELIMITER = "__"


def _env_text(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def _flatten(prefix: str, model: BaseModel, into: dict[str, str]) -> None:
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = f"{prefix}{name.upper()}"
        if isinstance(value, BaseModel):
            _flatten(key + NESTED_DELIMITER, value, into)
            continue
        default = field.get_default(call_default_factory=True)
        if value is None or value == default:
            continue
        elif isinstance(value, (Mapping, list, tuple)):
            raise TypeError(
                f"setting {key}: {type(value).__name__} values have no environment form yet"
            )
        else:
            into[key] = _env_text(value)


def settings_to_env(settings: Settings) -> dict[str, str]:
    """Each non-default setting as an `EMOSTREAM_*` variable; `Settings()` in a child reads it back equal."""
    variables: dict[str, str] = {}
    _flatten(ENV_PREFIX, settings, variables)
    return variables


def is_settings_variable(name: str) -> bool:
    """Whether `name` sets a Settings field (EMOSTREAM_KAFKA__..., EMOSTREAM_WORKER_ID, ...).

    Other EMOSTREAM_* variables, such as EMOSTREAM_MODEL_PATH (the model registry's search path),
    are not settings and pass through to children unchanged.
    """
    if not name.startswith(ENV_PREFIX):
        return False
    for field_name in Settings.model_fields:
        prefix = f"{ENV_PREFIX}{field_name.upper()}"
        if name == prefix or name.startswith(prefix + NESTED_DELIMITER):
            return True
    return False


def child_environment(
    settings: Settings, *, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`base` (default: this process's environment) without its settings variables, plus `settings`."""
    inherited = os.environ if base is None else base
    environment = {
        name: value for name, value in inherited.items() if not is_settings_variable(name)
    }
    environment.update(settings_to_env(settings))
    return environment
