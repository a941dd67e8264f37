"""The layering rule of the design card, checked on the source with `ast` (every import, including
those inside functions and under TYPE_CHECKING):

- `schemas/` imports nothing of ours; `model/` and `plugins/` import `schemas/` only (never each
  other, never `workers/`);
- inside `workers/`: CLI -> stack and stages -> runtime; nothing below imports anything above, and
  `stages` and `stack` never import each other (see workers/__init__.py).
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("schemas", "model", "plugins", "workers")

# module prefix -> prefixes (of ours) it may import
ALLOWED: dict[str, tuple[str, ...]] = {
    "emostream.schemas": ("emostream.schemas",),
    "emostream.model": ("emostream.schemas", "emostream.model"),
    "emostream.plugins": ("emostream.schemas", "emostream.plugins"),
    "emostream.workers.runtime": (
        "emostream.schemas", "emostream.model", "emostream.plugins", "emostream.workers.runtime",
    ),
    "emostream.workers.stages": (
        "emostream.schemas", "emostream.model", "emostream.plugins", "emostream.workers.runtime",
        "emostream.workers.stages",
    ),
    "emostream.workers.stack": (
        "emostream.schemas", "emostream.model", "emostream.plugins", "emostream.workers.runtime",
        "emostream.workers.stack",
    ),
    "emostream.workers.cli": ("emostream",),
}


def _module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["emostream", *parts])


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from emostream.workers import cli` imports emostream.workers.cli
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name == "emostream" or name.startswith("emostream.")]


def _rule_for(module: str) -> tuple[str, tuple[str, ...]]:
    matches = [prefix for prefix in ALLOWED if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module}: no layering rule covers it; add its subpackage to ALLOWED"
    prefix = max(matches, key=len)
    return prefix, ALLOWED[prefix]


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _source_files() -> list[Path]:
    return sorted(path for folder in TOP_LEVEL for path in (REPO / folder).rglob("*.py"))


def test_every_source_module_is_covered_by_a_rule() -> None:
    files = _source_files()
    assert len(files) > 50
    uncovered = [str(path) for path in files if _module_name(path) == "emostream.workers"]
    assert uncovered == [str(REPO / "workers" / "__init__.py")]  # the package docstring only
    for path in files:
        module = _module_name(path)
        if module != "emostream.workers":
            _rule_for(module)
    assert not list((REPO / "workers").glob("[!_]*.py")), "workers/ holds subpackages only"


@pytest.mark.parametrize("path", _source_files(), ids=lambda path: str(path.relative_to(REPO)))
def test_imports_follow_the_layering(path: Path) -> None:
    module = _module_name(path)
    if module == "emostream.workers":
        assert _imports(path) == []
        return
    prefix, allowed = _rule_for(module)
    # importing the bare parent package (e.g. `from emostream.workers import runtime`) is judged by
    # the names it imports, recorded separately
    wrong = [
        f"line {line}: {name}"
        for line, name in _imports(path)
        if name not in ("emostream", "emostream.workers") and not _within(name, allowed)
    ]
    assert not wrong, f"{module} ({prefix}) may import only {allowed}; found " + ", ".join(wrong)


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    """The rule can fail: an import of the CLI from the runtime is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from emostream.workers.cli.clients import tail\n")
    names = [name for _line, name in _imports(bad)]
    allowed = ALLOWED["emostream.workers.runtime"]
    assert [name for name in names if not _within(name, allowed)]
