"""Fault suite (issue 6): each scenario breaks one part of the system mid-run and checks that no
task is lost or run twice. Run it with ``.venv/bin/pytest -q tests/faults``."""
