"""Packaging hook: the installed ``webapp`` package carries the console's templates and static
files and the migrations.

They live at the top of the checkout (``templates/``, ``static/``, ``migrations/``), where
``create_app`` finds them in development; a wheel copies them into ``webapp/`` so that an
installed app (``pip install .``, not editable) finds them next to its own code, from any
working directory. Everything else is declared in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
ASSET_DIRS = ("templates", "static", "migrations")


class BuildPyWithAssets(build_py):
    """``build_py`` that also copies the top-level asset folders into ``webapp/``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install serves the checkout's folders directly
        for name in ASSET_DIRS:
            source = ROOT / name
            if not source.is_dir():
                raise SystemExit(f"setup.py: {source} is missing; it must ship inside the package")
            target = Path(self.build_lib) / "webapp" / name
            if target.exists():
                shutil.rmtree(target)  # no stale file from an earlier build
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"))


setup(cmdclass={"build_py": BuildPyWithAssets})
