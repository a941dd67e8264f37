"""The one `"module:attribute"` importer: plugin classes, callback targets and the worker stage builders.

It lives in `plugins/` because that is the lowest layer that needs it (`workers/` imports plugins,
never the reverse)."""

import importlib
from typing import Any

__all__ = ["import_target"]


def import_target(target: str) -> Any:
    """`"package.module:name"` -> the object; ValueError / ImportError name the target."""
    module_name, separator, attribute = target.partition(":")
    if not separator or not module_name or not attribute:
        raise ValueError(f"{target!r} is not of the form 'package.module:attribute'")
    module = importlib.import_module(module_name)
    try:
        value: Any = module
        for part in attribute.split("."):
            value = getattr(value, part)
    except AttributeError:
        raise ImportError(f"{target!r}: module {module_name!r} has no attribute {attribute!r}") from None
    return value
