"""Recurring schedules: cron and interval definitions that create tasks, one per slot.

Layers, each depending only on the ones above it: ``models`` and ``triggers`` (fire times),
``definition`` (validation), ``service`` (every change, audited), ``runner`` (the scheduler
job that turns due slots into tasks), ``declarations`` (schedules in code and configuration),
``cli``. The console and API views live with their blueprints. Nothing runs at import.
"""
