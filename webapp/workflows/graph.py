"""A workflow laid out for the console: layered left to right, as SVG coordinates (no HTML here).

A task's layer is the length of the longest chain of parents before it, so every edge points
right; within a layer tasks keep their submission order. Large workflows are summarised
instead (``GROUP_ABOVE`` tasks): counts by task type and status, since thousands of nodes
are neither readable nor cheap to draw.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from .queries import WorkflowTask

GROUP_ABOVE = 200  # more tasks than this: the grouped view
NODE_WIDTH, NODE_HEIGHT = 150, 36
COLUMN_GAP, ROW_GAP, MARGIN = 60, 14, 10
MAX_LABEL = 18
# Node colours by status (SVG presentation attributes: the console's CSP allows no inline style).
FILL = {"WAITING": "#f2f3f7", "PENDING": "#e8ecf5", "RETRYING": "#fdf1dc", "PROCESSING": "#cfe0ff",
        "SUCCESS": "#bfe8cf", "FAILURE": "#f6c4c6", "CANCELLED": "#dddddd"}
STROKE = {"WAITING": "#9aa1ad", "PENDING": "#6b7a99", "RETRYING": "#b7791f", "PROCESSING": "#2f6fde",
          "SUCCESS": "#1f8a4c", "FAILURE": "#c0392b", "CANCELLED": "#777777"}


@dataclass(frozen=True)
class Node:
    """A task's box: position, colours, label and the task it links to."""

    task_id: int
    key: str
    label: str
    status: str
    x: int
    y: int
    fill: str
    stroke: str


@dataclass(frozen=True)
class Edge:
    """An arrow from the right middle of a parent's box to the left middle of its child's."""

    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True)
class Layout:
    """Every node and edge and the drawing's size."""

    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int


def layers(task_ids: Sequence[int], edges: Sequence[tuple[int, int]]) -> dict[int, int]:
    """Each task's layer: 0 without parents, else one more than its deepest parent."""
    parents: dict[int, list[int]] = defaultdict(list)
    children: dict[int, list[int]] = defaultdict(list)
    for parent, child in edges:
        parents[child].append(parent)
        children[parent].append(child)
    waiting = {task: len(parents[task]) for task in task_ids}
    layer = dict.fromkeys(task_ids, 0)
    ready = [task for task in task_ids if waiting[task] == 0]
    while ready:
        task = ready.pop()
        for child in children[task]:
            layer[child] = max(layer[child], layer[task] + 1)
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    return layer


def layout(tasks: Sequence[WorkflowTask], edges: Sequence[tuple[int, int]]) -> Layout:
    """Boxes in columns by layer, rows by submission order, arrows between them."""
    layer_of = layers([t.id for t in tasks], edges)
    rows: Counter[int] = Counter()
    place: dict[int, tuple[int, int]] = {}
    nodes = []
    for task in tasks:
        column, row = layer_of[task.id], rows[layer_of[task.id]]
        rows[column] += 1
        x = MARGIN + column * (NODE_WIDTH + COLUMN_GAP)
        y = MARGIN + row * (NODE_HEIGHT + ROW_GAP)
        place[task.id] = (x, y)
        label = task.key if len(task.key) <= MAX_LABEL else task.key[:MAX_LABEL - 1] + "…"
        nodes.append(Node(task.id, task.key, label, task.status, x, y, FILL.get(task.status, "#ffffff"),
                          STROKE.get(task.status, "#333333")))
    arrows = [Edge(place[p][0] + NODE_WIDTH, place[p][1] + NODE_HEIGHT // 2, place[c][0] - 4,
                   place[c][1] + NODE_HEIGHT // 2) for p, c in edges if p in place and c in place]
    columns = max(layer_of.values(), default=0) + 1
    width = 2 * MARGIN + columns * NODE_WIDTH + (columns - 1) * COLUMN_GAP
    height = 2 * MARGIN + max(rows.values(), default=1) * (NODE_HEIGHT + ROW_GAP) - ROW_GAP
    return Layout(nodes, arrows, width, height)


@dataclass(frozen=True)
class Group:
    """The grouped view's row: how many tasks of a type are in each status."""

    task_type: str
    counts: dict[str, int]
    total: int


def grouped(tasks: Sequence[WorkflowTask]) -> list[Group]:
    """Counts by task type and status, for workflows too large to draw node by node."""
    by_type: dict[str, Counter[str]] = defaultdict(Counter)
    for task in tasks:
        by_type[task.task_type][task.status] += 1
    return [Group(task_type, dict(counts), sum(counts.values())) for task_type, counts in sorted(by_type.items())]
