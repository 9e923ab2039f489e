"""training/ uses the server only through server/for_training.py, and that surface stays the one listed
here: anything else in the server may then change without breaking training."""

from __future__ import annotations

import ast

from server import for_training
from tests.conftest import ROOT

SURFACE = {
    "QUANT_TYPES",
    "VOCABULARY",
    "Companion",
    "Components",
    "ConfigError",
    "DataFile",
    "Invalid",
    "LlamaCppChat",
    "ModelError",
    "Outcome",
    "PersonaSection",
    "Prompts",
    "Records",
    "SentenceSplitter",
    "TadbotError",
    "TurnInput",
    "check_decode",
    "exit_code",
    "fold_system",
    "llama_log",
    "load_settings",
    "normalize_label",
    "quantize",
    "read_rows",
}


def _server_imports() -> list[tuple[str, str, set[str]]]:
    """(file, module, names) for each import of the server anywhere under training/."""
    found = []
    for path in sorted((ROOT / "training").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = str(path.relative_to(ROOT))
            if isinstance(node, ast.Import):
                found += [(where, a.name, set()) for a in node.names if a.name.split(".")[0] == "server"]
            elif (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("server")
            ):
                found.append((where, str(node.module), {a.name for a in node.names}))
    return found


def test_training_imports_the_server_only_through_its_surface() -> None:
    imports = _server_imports()
    assert imports, "training/ is expected to use the server's surface"
    assert [(f, m) for f, m, _ in imports if m != "server.for_training"] == []
    used = set().union(*(names for _, _, names in imports))
    assert used == SURFACE, "the surface should hold what training uses, and no more"


def test_the_surface_is_exactly_the_pinned_list() -> None:
    assert set(for_training.__all__) == SURFACE
    assert all(hasattr(for_training, name) for name in SURFACE)
