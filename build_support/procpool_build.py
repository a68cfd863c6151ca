"""
procpool's build backend: setuptools' own (``setuptools.build_meta``), with
its scratch directories kept out of the source tree.

``pip install .`` builds in the source tree, and setuptools leaves ``build/``
and ``procpool.egg-info/`` there. Every hook below runs setuptools with an
extra configuration file (``DIST_EXTRA_CONFIG``) that puts ``build_base`` and
``egg_base`` in a temporary directory, removed afterwards. Editable installs
(``pip install -e .``) are setuptools' own, unchanged.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 - every hook not wrapped below


@contextlib.contextmanager
def _scratch_outside_the_tree() -> Iterator[None]:
    """Point setuptools' build and egg-info directories at a temporary directory."""
    previous = os.environ.get("DIST_EXTRA_CONFIG")
    with tempfile.TemporaryDirectory(prefix="procpool-build-") as scratch:
        config = configparser.ConfigParser(interpolation=None)
        config.optionxform = str  # type: ignore[assignment,method-assign]
        if previous:
            config.read(previous, encoding="utf-8")  # keep what the user asked for
        for section, option, value in (("build", "build_base", os.path.join(scratch, "build")),
                                       ("egg_info", "egg_base", scratch)):
            if not config.has_section(section):
                config.add_section(section)
            config.set(section, option, value)
        path = os.path.join(scratch, "scratch.cfg")
        with open(path, "w", encoding="utf-8") as file:
            config.write(file)
        os.environ["DIST_EXTRA_CONFIG"] = path
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("DIST_EXTRA_CONFIG", None)
            else:
                os.environ["DIST_EXTRA_CONFIG"] = previous


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    """setuptools' hook, without scratch files in the tree."""
    with _scratch_outside_the_tree():
        return _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_sdist(config_settings: Any = None) -> list[str]:
    """setuptools' hook, without scratch files in the tree."""
    with _scratch_outside_the_tree():
        return _setuptools.get_requires_for_build_sdist(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory: str,
                                     config_settings: Any = None) -> str:
    """setuptools' hook, without scratch files in the tree."""
    with _scratch_outside_the_tree():
        return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def build_wheel(wheel_directory: str, config_settings: Any = None,
                metadata_directory: str | None = None) -> str:
    """setuptools' hook, without scratch files in the tree."""
    with _scratch_outside_the_tree():
        return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory: str, config_settings: Any = None) -> str:
    """setuptools' hook, without scratch files in the tree."""
    with _scratch_outside_the_tree():
        return _setuptools.build_sdist(sdist_directory, config_settings)
