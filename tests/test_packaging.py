"""Packaging: one version, an SPDX licence, and every declared dependency used."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import landprobe

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "landprobe"
IMPORT_NAME = {"pillow": "PIL"}          # distribution name -> module name, where they differ

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = None


def _pyproject() -> dict:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    if tomllib is not None:
        return tomllib.loads(text)
    deps = re.search(r"^dependencies = \[(.*?)\]", text, flags=re.S | re.M).group(1)
    return {"project": {"dependencies": re.findall(r'"([^"]+)"', deps), "dynamic": ["version"],
                        "license": re.search(r'^license = "([^"]+)"', text, flags=re.M).group(1)}}


def _imported_top_levels() -> set[str]:
    found = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_the_version_has_one_source():
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert importlib.metadata.version("landprobe") == landprobe.__version__


def test_the_licence_is_an_spdx_expression():
    assert _pyproject()["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT")


def test_every_core_dependency_is_imported_by_the_package():
    used = _imported_top_levels()
    for requirement in _pyproject()["project"]["dependencies"]:
        name = re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower()
        assert IMPORT_NAME.get(name, name) in used, f"{name} is declared in pyproject.toml but never imported"
