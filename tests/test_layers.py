"""The package's rooms form layers: a module may import its own room or rooms below it, never one above.

Run by hand with `python -m pytest tests/test_layers.py -q`; the failure lists every offending import.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mbt"

# Lowest first. A room's modules may import rooms at its own rank or below.
LAYERS: dict[str, int] = {
    "errors": 0, "schema": 0, "fileio": 0, "bars": 0,
    "media": 1,
    "model": 2,
    "config": 3,
    "data": 4, "interop": 4,
    "engine": 5,
    "analysis": 6,
    "recipes": 7,
    "commands": 8, "cli": 8, "__init__": 8, "__main__": 8, "configs": 8,
}


def _room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name == "mbt" or name.startswith("mbt.")]


def upward_imports() -> list[str]:
    offences = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(relative.parts)
        room = _room(module) if relative.name != "__init__" or len(relative.parts) > 2 else "__init__"
        for line, target in _imports(path):
            target_room = _room(target)
            if LAYERS.get(target_room, 99) > LAYERS.get(room, -1):
                offences.append(f"{path.relative_to(SRC.parent)}:{line}: {room} imports {target} ({target_room})")
    return offences


def test_every_room_has_a_layer():
    rooms = {p.name.removesuffix(".py") for p in SRC.iterdir() if not p.name.startswith((".", "__pycache__"))}
    assert rooms - set(LAYERS) == set(), "give the new room a layer in LAYERS"


def test_no_module_imports_from_a_layer_above_it():
    assert upward_imports() == []
