"""A plan's names: every teacher, cache and model a plan uses is defined, and none depends on
itself through the others (a model, through its cache, on the same model)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kd.jobs.plan import Plan


def check_references(plan: Plan, error) -> None:
    """Every name a plan uses is defined, and the names do not depend on each other in a cycle.
    `error(key, message)` makes the exception."""
    for name, cache in plan.caches.items():
        for index, source_name in enumerate(cache.teachers):
            if source_name not in plan.teachers and source_name not in plan.models:
                raise error(("caches", name, "teachers", index), f"{source_name!r}: no such teacher or model")
            if source_name in plan.models and plan.models[source_name].kind == "teacher":
                raise error(("caches", name, "teachers", index), f"{source_name!r}: name the teacher itself, "
                                                                 f"{plan.models[source_name].teacher!r}")
    for name, model in plan.models.items():
        if model.cache is not None and model.cache not in plan.caches:
            raise error(("models", name, "cache"), f"{model.cache!r}: no such cache")
        if model.teacher is not None and model.teacher not in plan.teachers:
            raise error(("models", name, "teacher"), f"{model.teacher!r}: no such teacher")
    for name, table in plan.tables.items():
        for index, model in enumerate(table.models):
            if model not in plan.models:
                raise error(("tables", name, "models", index), f"{model!r}: no such model")
    _check_cycles(plan, error)


def _check_cycles(plan: Plan, error) -> None:
    """Models use caches, caches use teachers or models: a model reached again through its own
    cache is a cycle."""
    def uses(node: tuple[str, str]) -> list[tuple[str, str]]:
        kind, name = node
        if kind == "models" and plan.models[name].cache:
            return [("caches", plan.models[name].cache)]
        if kind == "caches":
            return [("models" if t in plan.models else "teachers", t) for t in plan.caches[name].teachers]
        return []

    done: set[tuple[str, str]] = set()

    def visit(node: tuple[str, str], path: list[tuple[str, str]]) -> None:
        if node in path:
            cycle = " -> ".join(n for _, n in path[path.index(node):] + [node])
            raise error(path[path.index(node)] + ("cache" if node[0] == "models" else "teachers",), f"cycle {cycle}")
        if node in done:
            return
        for used in uses(node):
            visit(used, path + [node])
        done.add(node)

    for name in plan.models:
        visit(("models", name), [])
