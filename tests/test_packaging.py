"""
Packaging: a non-editable ``pip install <checkout>`` into a fresh virtualenv
leaves the checkout as it was (no ``build/``, ``*.egg-info`` or ``dist/``), and
the installed metadata names its author.

The install runs on a copy of the checkout (the files git knows, committed or
not), so this test never touches the working tree. It builds with build
isolation, so it needs the package index for setuptools; without it it skips.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _copy_checkout(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(checkout copy, its paths before the install, the venv's python)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to copy")
    base = tmp_path_factory.mktemp("packaging")
    source = base / "procpool-src"
    _copy_checkout(source)
    before = _tree(source)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--quiet",
         "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        text = result.stdout + result.stderr
        if any(sign in text for sign in ("No matching distribution", "Could not find a version",
                                          "NewConnectionError", "Network is unreachable")):
            pytest.skip(f"the package index is not reachable for the build:\n{text[-2000:]}")
        raise AssertionError(f"pip install failed:\n{text}")
    return source, before, python


def test_non_editable_install_leaves_no_build_or_egg_info_in_the_source_tree(installed):
    source, before, _python = installed
    assert not (source / "build").exists()
    assert not list(source.glob("*.egg-info"))
    assert not (source / "dist").exists()
    assert _tree(source) - before == set()


def test_installed_metadata_names_the_author(installed):
    _source, _before, python = installed
    metadata = subprocess.run(
        [str(python), "-c",
         "import importlib.metadata as m, json; md = m.metadata('procpool'); "
         "print(json.dumps({k: md.get_all(k) for k in md.keys()}))"],
        cwd=python.parent, check=True, capture_output=True, text=True, timeout=60).stdout
    fields = json.loads(metadata)
    assert fields.get("Author") == ["the procpool developers"]
    assert fields.get("License") == ["BSD-3-Clause"]
    assert fields.get("Requires-Python") == [">=3.11"]

