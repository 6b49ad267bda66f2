"""The layers import only downward: apps -> pipelines -> generators -> guidance; nothing imports training."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("guidance", "generators", "pipelines", "training", "apps")
FORBIDDEN = {
    "guidance": {"generators", "pipelines", "training", "apps"},
    "generators": {"pipelines", "training", "apps"},
    "pipelines": {"training", "apps"},
    "apps": {"training"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level names a module imports (absolute imports, at any depth in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_no_higher_layer(package):
    offending = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
                 for path in (ROOT / package).rglob("*.py")}
    assert not {path: names for path, names in offending.items() if names}


def test_every_package_is_checked():
    assert {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} <= set(PACKAGES)


def test_import_guidance_pulls_in_neither_diffusers_nor_gradio():
    code = ("import sys, guidance; heavy = sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'gradio'}); "
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
