"""docs/architecture.md maps every module of webapp/ (a new module needs its line there)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_module_of_webapp_is_on_the_map():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    mapped = set(re.findall(r"^\| `([\w/]+\.py)` \|", doc, flags=re.MULTILINE))
    webapp = ROOT / "webapp"
    modules = {path.relative_to(webapp).as_posix() for path in webapp.rglob("*.py")}
    assert sorted(modules - mapped) == [], "add these modules to the map in docs/architecture.md"
    assert sorted(mapped - modules) == [], "these mapped modules no longer exist"
