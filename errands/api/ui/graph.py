"""A workflow drawn as SVG on the server: its jobs as boxes in columns by depth (every job
right of all its parents), edges from parent to child, each box coloured by its state."""

from __future__ import annotations

from dataclasses import dataclass

from errands.queue.jobs import Job

BOX_WIDTH, BOX_HEIGHT, COLUMN_GAP, ROW_GAP, MARGIN = 150, 34, 60, 14, 10
# Beyond this many jobs the page lists them instead: a graph that large reads as nothing.
MAX_DRAWN = 300


@dataclass(frozen=True)
class Box:
    job: Job
    x: int
    y: int


@dataclass(frozen=True)
class Edge:
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True)
class Graph:
    width: int
    height: int
    boxes: list[Box]
    edges: list[Edge]
    box_width: int = BOX_WIDTH
    box_height: int = BOX_HEIGHT


def workflow_graph(jobs: list[Job]) -> Graph | None:
    """The layout of `jobs` (parents before children, as a workflow is read), or None when
    there are too many to draw. A parent outside the workflow (or pruned) draws no edge."""
    if len(jobs) > MAX_DRAWN:
        return None
    depth: dict[int, int] = {}
    for job in jobs:  # ids grow from parents to children: one pass settles every depth
        parents = [depth[p] for p in job.parents or () if p in depth]
        depth[job.id] = 1 + max(parents) if parents else 0
    rows: dict[int, int] = {}
    place: dict[int, tuple[int, int]] = {}
    for job in jobs:
        column = depth[job.id]
        row = rows.get(column, 0)
        rows[column] = row + 1
        place[job.id] = (
            MARGIN + column * (BOX_WIDTH + COLUMN_GAP),
            MARGIN + row * (BOX_HEIGHT + ROW_GAP),
        )
    boxes = [Box(job, *place[job.id]) for job in jobs]
    edges = [
        Edge(
            place[parent][0] + BOX_WIDTH,
            place[parent][1] + BOX_HEIGHT // 2,
            place[job.id][0],
            place[job.id][1] + BOX_HEIGHT // 2,
        )
        for job in jobs
        for parent in job.parents or ()
        if parent in place
    ]
    width = MARGIN * 2 + (max(depth.values(), default=0) + 1) * (BOX_WIDTH + COLUMN_GAP)
    height = MARGIN * 2 + max(rows.values(), default=1) * (BOX_HEIGHT + ROW_GAP)
    return Graph(width, height, boxes, edges)
