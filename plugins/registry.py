"""Finding plugins (Python entry points) and building them from configuration (JSON).

Registration
------------
A package makes a plugin available under a type name with an entry point:

    [project.entry-points."emostream.plugins"]
    crm = "my_package.crm:CrmPlugin"

A type may also be given as a dotted path, `"my_package.crm:CrmPlugin"`, with no packaging.

Configuration (JSON; from `EMOSTREAM_PLUGINS__CONFIG_PATH=/etc/emostream/plugins.json` or inline in
`EMOSTREAM_PLUGINS__CONFIG_JSON`)
------------------------------------------------------------------------------------------------
    {"plugins": [
      {"type": "webhook", "name": "crm",
       "options": {"url": "https://crm.example/hooks/emotion", "secret": "${CRM_WEBHOOK_SECRET}",
                   "decision": {"confidence_threshold": 0.5, "hysteresis_segments": 2}},
       "timeout_s": 3, "max_attempts": 4},
      {"type": "analytics", "options": {"alert_labels": ["angry", "fearful"], "consecutive_segments": 3}}
    ]}

A bare list of plugin entries is accepted too. A string option that is exactly `${NAME}` is
replaced by the environment variable NAME (so secrets stay out of the file). Every error names the
plugin (and the option) at fault, before any event is consumed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from emostream.plugins.api import Plugin, PluginConfigError
from emostream.plugins.delivery import DeliveryPolicy
from emostream.plugins.importing import import_target
from emostream.schemas.settings import PluginSettings
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENTRY_POINT_GROUP = "emostream.plugins"

# Used only when the distribution's entry points are not installed (a bare source checkout);
# pyproject.toml's [project.entry-points."emostream.plugins"] is the declaration of record.
BUILTIN_PLUGIN_PATHS: dict[str, str] = {
    "callback": "emostream.plugins.callback:CallbackPlugin",
    "webhook": "emostream.plugins.webhook:WebhookPlugin",
    "rasa": "emostream.plugins.rasa:RasaPlugin",
    "analytics": "emostream.plugins.analytics:AnalyticsPlugin",
}

_ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class PluginSpec(BaseModel):
    """One entry of the plugin configuration."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, description="entry-point name (`webhook`) or `module:Class`")
    name: str | None = Field(None, description="unique instance name; default: the type")
    enabled: bool = True
    options: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = Field(None, gt=0)
    max_attempts: int | None = Field(None, ge=1)
    backoff_initial_s: float | None = Field(None, ge=0)
    backoff_max_s: float | None = Field(None, ge=0)

    @property
    def instance_name(self) -> str:
        return self.name or self.type


class ConfiguredPlugin(BaseModel):
    """A built plugin and its delivery policy."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    plugin: Plugin[Any]
    policy: DeliveryPolicy

    @property
    def name(self) -> str:
        return self.plugin.name


def available_plugin_types() -> dict[str, str]:
    """Type name -> `module:Class` of every registered plugin (entry points over built-ins)."""
    found = dict(BUILTIN_PLUGIN_PATHS)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        found[entry_point.name] = entry_point.value
    return found


def load_plugin_class(type_name: str, *, plugin_name: str | None = None) -> type[Plugin[Any]]:
    """Resolve an entry-point name or a `module:Class` path to a Plugin subclass."""
    who = f"plugin {plugin_name or type_name!r}"
    path = type_name if ":" in type_name else available_plugin_types().get(type_name)
    if path is None:
        known = ", ".join(sorted(available_plugin_types()))
        raise PluginConfigError(
            f"{who}: unknown type {type_name!r}; registered types are {known} "
            f"(or give `package.module:Class`)"
        )
    try:
        target: Any = import_target(path)
    except (ImportError, ValueError) as error:
        raise PluginConfigError(f"{who}: cannot import {path!r}: {error}") from error
    if not (isinstance(target, type) and issubclass(target, Plugin)):
        raise PluginConfigError(f"{who}: {path!r} is not a subclass of emostream.plugins.Plugin")
    return target


def resolve_env_references(value: Any, *, plugin_name: str, option_path: str = "") -> Any:
    """Replace strings that are exactly `${NAME}` by the environment variable NAME."""
    if isinstance(value, str):
        match = _ENV_REFERENCE.match(value)
        if match is None:
            return value
        variable = match.group(1)
        if variable not in os.environ:
            raise PluginConfigError(
                f"plugin {plugin_name!r}: option {option_path!r} refers to environment variable "
                f"{variable}, which is not set"
            )
        return os.environ[variable]
    if isinstance(value, Mapping):
        return {
            key: resolve_env_references(item, plugin_name=plugin_name, option_path=f"{option_path}.{key}".lstrip("."))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            resolve_env_references(item, plugin_name=plugin_name, option_path=f"{option_path}[{index}]")
            for index, item in enumerate(value)
        ]
    return value


def parse_plugin_config(raw: str | bytes | Mapping[str, Any] | Sequence[Any], *, source: str) -> list[PluginSpec]:
    """Parse the JSON configuration (text, or already-decoded) into specs; errors name the entry."""
    data: Any = raw
    if isinstance(raw, (str, bytes)):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as error:
            raise PluginConfigError(f"plugin configuration {source}: not valid JSON: {error}") from None
    if isinstance(data, Mapping):
        unknown = set(data) - {"plugins"}
        if unknown:
            raise PluginConfigError(
                f"plugin configuration {source}: unknown top-level key(s) {sorted(unknown)}; expected 'plugins'"
            )
        data = data.get("plugins", [])
    if not isinstance(data, list):
        raise PluginConfigError(f"plugin configuration {source}: expected a list of plugins or {{'plugins': [...]}}")
    specs: list[PluginSpec] = []
    for index, entry in enumerate(data):
        label = entry.get("name") or entry.get("type") if isinstance(entry, Mapping) else None
        try:
            specs.append(PluginSpec.model_validate(entry))
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or 'entry'}: {item['msg']}" for item in error.errors()
            )
            raise PluginConfigError(
                f"plugin configuration {source}, entry {index} ({label or 'unnamed'}): {problems}"
            ) from None
    names = [spec.instance_name for spec in specs if spec.enabled]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PluginConfigError(
            f"plugin configuration {source}: plugin name(s) {duplicates} used twice; give each a unique `name`"
        )
    return specs


def load_plugin_specs(settings: PluginSettings) -> list[PluginSpec]:
    """The specs from `config_path` and/or `config_json` (both may be set; names must be unique)."""
    specs: list[PluginSpec] = []
    if settings.config_path:
        path = Path(settings.config_path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise PluginConfigError(f"plugin configuration file {path}: cannot read it: {error}") from None
        specs.extend(parse_plugin_config(text, source=f"file {path}"))
    if settings.config_json:
        specs.extend(parse_plugin_config(settings.config_json, source="EMOSTREAM_PLUGINS__CONFIG_JSON"))
    return parse_plugin_config([spec.model_dump(exclude_none=True) for spec in specs], source="(combined)")


def build_plugin(spec: PluginSpec, defaults: PluginSettings) -> ConfiguredPlugin:
    """Validate one spec's options against its plugin's Options model and build it."""
    name = spec.instance_name
    plugin_class = load_plugin_class(spec.type, plugin_name=name)
    options = resolve_env_references(spec.options, plugin_name=name)
    plugin = plugin_class.from_options(options, name=name)
    policy = DeliveryPolicy.from_settings(
        defaults,
        timeout_s=spec.timeout_s,
        max_attempts=spec.max_attempts,
        backoff_initial_s=spec.backoff_initial_s,
        backoff_max_s=spec.backoff_max_s,
    )
    return ConfiguredPlugin(plugin=plugin, policy=policy)


def build_plugins(settings: PluginSettings, specs: Sequence[PluginSpec] | None = None) -> list[ConfiguredPlugin]:
    """Build every enabled plugin of the configuration; the first bad one raises PluginConfigError."""
    chosen = load_plugin_specs(settings) if specs is None else list(specs)
    return [build_plugin(spec, settings) for spec in chosen if spec.enabled]
