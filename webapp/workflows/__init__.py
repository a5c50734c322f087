"""Workflows: tasks submitted together that wait for each other, with callbacks when they end.

``models`` holds the tables, ``validation`` checks a submitted graph, ``submit`` writes it,
``resolution`` is what the engine calls when a workflow's task changes status (release, cancel
downstream, count, finish, callbacks), ``actions`` cancels and retries a whole workflow,
``queries`` reads them for the front ends, ``graph`` lays one out for the console, ``cli`` is
``flask workflows …``. Docs: ``docs/workflows.md``.
"""
