"""The server's layering, checked from the source: each module imports only from its own package or from a
layer below its own, so a reply's path reads top-down (api -> conversation -> safety, face, speech, memory,
records -> config, errors) and no concern reaches sideways into another. Imports inside functions and under
TYPE_CHECKING count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Lowest first. A module may import anything in a lower layer, and within its own layer only its own unit.
LAYERS: tuple[dict[str, tuple[str, ...]], ...] = (
    {"errors": ("errors",)},
    {"config": ("config", "sections"), "datafiles": ("datafiles",)},
    {"models": ("models",)},
    {
        "speech": ("speech",),
        "face": ("face",),
        "safety": ("safety",),
        "memory": ("memory",),
        "records": ("records",),
    },
    {"conversation": ("conversation",), "access": ("access",)},
    {"web": ("app", "api", "dashboard")},
    {"tools": ("cli", "serve", "notify", "bench", "eval", "for_training", "__main__")},
)


def _unit(module: str) -> tuple[int, str]:
    """The layer and unit of `server.<first>...`."""
    first = module.split(".")[1]
    for level, units in enumerate(LAYERS):
        for unit, tops in units.items():
            if first in tops:
                return level, unit
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "server").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path) -> set[str]:
    """Every server module `module` names in an import, absolute or relative."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "server"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "server":
                continue
            if base == "server":
                names |= {f"server.{a.name}" for a in node.names}
            else:
                names.add(base)
    return names


def _allowed(module: str, imported: str) -> bool:
    """Downward, within its own unit, or from a tool (which may reach anything)."""
    level, unit = _unit(module)
    their_level, their_unit = _unit(imported)
    return their_level < level or their_unit == unit or level == len(LAYERS) - 1


def _breaches() -> list[str]:
    breaches = []
    for module, path in _modules().items():
        if module == "server":
            continue
        unit = _unit(module)[1]
        for imported in sorted(_imports(module, path)):
            if imported == "server":
                breaches.append(f"{module} imports the server package itself")
                continue
            if not _allowed(module, imported):
                breaches.append(f"{module} (layer {unit}) imports {imported} (layer {_unit(imported)[1]})")
    return breaches


def test_every_server_module_imports_only_downward_or_within_its_package() -> None:
    assert _breaches() == []


def test_every_package_has_a_docstring_that_names_what_it_may_import() -> None:
    for init in sorted((ROOT / "server").rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "May import" in doc, f"{init.relative_to(ROOT)}: say its job and what it may import"


@pytest.mark.parametrize(
    ("module", "imported", "breach"),
    [
        ("server.records.store", "server.memory.store", True),
        ("server.safety.care", "server.conversation.llm.chat", True),
        ("server.conversation.engine", "server.api.device", True),
        ("server.conversation.engine", "server.safety.care", False),
        ("server.api.device", "server.app", False),
        ("server.face.fer", "server.face.images", False),
    ],
)
def test_the_rule_tells_a_breach_from_an_allowed_import(module: str, imported: str, breach: bool) -> None:
    assert _allowed(module, imported) is not breach


def test_no_server_module_is_over_400_lines() -> None:
    """A module past 400 lines is asking to be split along a seam (STYLE.md)."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules().values()
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}
