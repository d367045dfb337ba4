"""The rooms of the package and the one-way arrows between them, read from every import statement.

cli -> service -> runtime -> geometry; training -> runtime, synth; synth -> geometry; recordings -> runtime,
calib, geometry, and only cli imports recordings. Lazy imports inside functions count as much as module-level ones: a route
that imported training on first use would still pull it into the server.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bev_service"

# room -> rooms it must never import (leaf modules such as classes, errors, imageio and shipped are open to all)
FORBIDDEN: dict[str, set[str]] = {
    "geometry": {"calib", "cli", "recordings", "runtime", "service", "synth", "training"},
    "synth": {"cli", "recordings", "runtime", "service", "training"},
    "calib": {"cli", "recordings", "runtime", "service", "synth", "training"},
    "runtime": {"calib", "cli", "recordings", "service", "synth", "training"},
    "service": {"cli", "recordings", "training"},
    "training": {"cli", "recordings", "service"},
    "recordings": {"cli", "service", "synth", "training"},
}


def imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "bev_service" and len(parts) > 1:
                rooms.add(parts[1])
    return rooms


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_room_imports_point_one_way(room: str) -> None:
    wrong = {
        str(path.relative_to(PACKAGE)): sorted(imported_rooms(path) & FORBIDDEN[room])
        for path in sorted((PACKAGE / room).rglob("*.py"))
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def test_every_package_has_an_init() -> None:
    folders = {p.parent for p in PACKAGE.rglob("*.py")}
    assert sorted(str(f.relative_to(PACKAGE)) for f in folders if not (f / "__init__.py").is_file()) == []


def test_a_forbidden_import_is_seen(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from bev_service.training.train import train\n    import bev_service.cli.main\n")
    assert imported_rooms(module) == {"training", "cli"}
