"""The layers of docs/architecture.md: lower layers never import upper ones."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "backdoor_bench"

# package (folder or module) -> what it must not import
FORBIDDEN = {
    "training": ("attacks", "defenses", "runner", "pipeline"),
    "data": ("attacks", "defenses", "runner", "pipeline", "training"),
    "models": ("attacks", "defenses", "runner", "pipeline", "training"),
    "cache.py": ("attacks", "defenses", "runner", "pipeline", "training", "data"),
    "defenses": ("attacks", "runner", "pipeline"),
    "attacks": ("defenses", "runner", "pipeline"),
}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("backdoor_bench."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("backdoor_bench.")}
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(layer):
    files = [PKG / layer] if layer.endswith(".py") else sorted((PKG / layer).rglob("*.py"))
    for f in files:
        bad = _imports(f) & set(FORBIDDEN[layer])
        assert not bad, f"{f.relative_to(PKG)} imports {sorted(bad)}"
