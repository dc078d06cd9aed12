"""The architecture written down (DESIGN.md §2): which part of mnc_teach may import which.

Every import of an ``mnc_teach`` module is read with ``ast``, including imports inside functions
and under ``if TYPE_CHECKING:`` (an arrow is an arrow, whenever it is followed). A wrong arrow
fails with the file, the line and the rule it breaks. When a test here fails, move the code to
where it belongs; do not widen the rule.

Layers, bottom to top (a layer may import itself and the layers listed for it):

    base        config, fileio                      (imports nothing of the package)
    geometry    structures, boxes, anchors, matching
    stages      backbone, roi_warp, stage1_rpn, stage2_masks, stage3_classify, postprocess
    cascade     cascade (the model: MNC, build_mnc)
    data        data/*        -> geometry, base
    evaluation  evaluation/*  -> geometry, base
    engine      engine/*      -> cascade, stages, geometry, base, data, evaluation
    viz         viz/*         -> geometry, base, data, evaluation, and the model's pure functions
                                 that place what is drawn (stages); never cascade or engine
    widgets     widgets/*     -> viz, engine, the model, data, evaluation
    course      course/*      -> anything
    entry       cli, __main__ -> anything

Nothing imports course or widgets except cli and notebooks; the model never imports engine, viz,
widgets, evaluation or course; there is no import cycle; and only the command line imports
lazily (inside functions), so that ``--help`` starts without torch.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mnc_teach"
TESTS = Path(__file__).resolve().parent

MODEL_FILES = {
    "config", "structures", "boxes", "anchors", "matching", "backbone", "roi_warp",
    "stage1_rpn", "stage2_masks", "stage3_classify", "cascade", "postprocess",
}
FOLDERS = {"data", "engine", "evaluation", "viz", "widgets", "course"}
OTHER_TOP_FILES = {"__init__", "__main__", "cli", "fileio"}

LAYER_OF_TOP_MODULE = {
    "config": "base", "fileio": "base",
    "structures": "geometry", "boxes": "geometry", "anchors": "geometry", "matching": "geometry",
    "backbone": "stages", "roi_warp": "stages", "stage1_rpn": "stages", "stage2_masks": "stages",
    "stage3_classify": "stages", "postprocess": "stages",
    "cascade": "cascade",
    "cli": "entry", "__main__": "entry", "__init__": "base",
}
MODEL = {"geometry", "stages", "cascade"}
UNDER_ENGINE = MODEL | {"base", "data", "evaluation"}
ALLOWED = {
    "base": set(),
    "geometry": {"base"},
    "stages": {"geometry", "base"},
    "cascade": {"stages", "geometry", "base"},
    "data": {"geometry", "base"},
    "evaluation": {"geometry", "base"},
    "engine": UNDER_ENGINE,
    "viz": {"stages", "geometry", "base", "data", "evaluation"},
    "widgets": UNDER_ENGINE | {"engine", "viz"},
    "course": UNDER_ENGINE | {"engine", "viz", "widgets"},
    "entry": UNDER_ENGINE | {"engine", "viz", "widgets", "course"},
}
NOT_FOR_THE_MODEL = {"engine", "viz", "widgets", "evaluation", "course"}
LAZY_IMPORTS_ALLOWED = {"mnc_teach.cli"}


@dataclass(frozen=True)
class Arrow:
    """``source`` imports ``target`` at ``path:line``; ``lazy``: the import is inside a function."""

    source: str
    target: str
    path: Path
    line: int
    lazy: bool

    def where(self) -> str:
        path = self.path.relative_to(PACKAGE.parent) if self.path.is_absolute() else self.path
        return f"{path}:{self.line}"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"  # the package itself: mnc_teach/__init__.py
    if parts[1] in FOLDERS:
        return parts[1]
    return LAYER_OF_TOP_MODULE[parts[1]]


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, source: str, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def arrows_of(source: str, path: Path, modules: set[str]) -> list[Arrow]:
    """Every mnc_teach module ``source`` imports, with line numbers; ``from mnc_teach.x import y``
    counts as an arrow to ``mnc_teach.x.y`` when y is a module, else to ``mnc_teach.x``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lazy_lines = {
        node.lineno
        for func in ast.walk(tree)
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(func)
        if isinstance(node, (ast.Import, ast.ImportFrom))
    }
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, source, path.name == "__init__.py")
            if base is None:
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}"
                targets.append(child if child in modules else base)
        for target in targets:
            if target == "mnc_teach" or target.startswith("mnc_teach."):
                found.append(Arrow(source, target, path, node.lineno, node.lineno in lazy_lines))
    return found


def all_arrows() -> list[Arrow]:
    modules = all_modules()
    names = set(modules)
    return [arrow for name, path in modules.items() for arrow in arrows_of(name, path, names)]


def layering_violations(arrows: list[Arrow]) -> list[str]:
    problems = []
    for arrow in arrows:
        if arrow.target == "mnc_teach":
            continue  # the package's own __init__ (a version string)
        source_layer, target_layer = layer_of(arrow.source), layer_of(arrow.target)
        if source_layer != target_layer and target_layer not in ALLOWED[source_layer]:
            if source_layer in MODEL and target_layer in NOT_FOR_THE_MODEL:
                rule = "the model never imports engine, viz, widgets, evaluation or course"
            else:
                allowed = ", ".join(sorted(ALLOWED[source_layer])) or "nothing of the package"
                rule = f"{source_layer} may import only {allowed}"
            problems.append(
                f"{arrow.where()}: {arrow.source} imports {arrow.target} "
                f"({source_layer} -> {target_layer}); rule: {rule} (DESIGN.md §2)"
            )
        if arrow.lazy and arrow.source not in LAZY_IMPORTS_ALLOWED:
            problems.append(
                f"{arrow.where()}: {arrow.source} imports {arrow.target} inside a function; "
                "rule: imports go at the top of the module (a lazy import hides an arrow)"
            )
    return problems


def import_cycles(arrows: list[Arrow]) -> list[list[str]]:
    """The shortest import cycle through each module that lies on one (breadth-first search back
    to the module), each cycle once, as a path ``[a, b, ..., a]``."""
    graph: dict[str, set[str]] = {}
    for arrow in arrows:
        if arrow.target != arrow.source:
            graph.setdefault(arrow.source, set()).add(arrow.target)
    cycles, seen = [], set()
    for start in sorted(graph):
        parent: dict[str, str] = {}
        queue, last = deque([start]), None
        while queue and last is None:
            node = queue.popleft()
            for succ in sorted(graph.get(node, ())):
                if succ == start:
                    last = node
                    break
                if succ not in parent:
                    parent[succ] = node
                    queue.append(succ)
        if last is None:
            continue
        path = [last]
        while path[-1] != start:
            path.append(parent[path[-1]])
        cycle = [*reversed(path), start]
        if frozenset(cycle) not in seen:
            seen.add(frozenset(cycle))
            cycles.append(cycle)
    return cycles


# ----------------------------------------------------------------------------- the rules


def test_the_top_level_is_the_model_plus_labelled_folders() -> None:
    entries = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if p.name != "__pycache__" and (p.suffix == ".py" or p.is_dir())
    }
    unexpected = entries - MODEL_FILES - FOLDERS - OTHER_TOP_FILES
    missing = (MODEL_FILES | FOLDERS) - entries
    assert not unexpected, (
        f"mnc_teach/ holds {sorted(unexpected)}: model files stay at the top, the rest goes into "
        "a folder named after its job (DESIGN.md §2)"
    )
    assert not missing, f"mnc_teach/ lacks {sorted(missing)}"


def test_every_module_belongs_to_a_layer() -> None:
    for name in all_modules():
        assert layer_of(name) in ALLOWED, name


def test_imports_follow_the_layers() -> None:
    problems = layering_violations(all_arrows())
    assert not problems, "wrong arrows:\n" + "\n".join(problems)


def test_there_is_no_import_cycle() -> None:
    cycles = import_cycles(all_arrows())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_module_has_its_own_test_file() -> None:
    """tests/ mirrors the package: mnc_teach/engine/loop.py -> tests/test_engine_loop.py."""
    missing = []
    for name in all_modules():
        parts = name.split(".")[1:]
        if not parts or all_modules()[name].name in {"__init__.py", "__main__.py"}:
            continue  # a package's __init__ and __main__ are tested through what they import
        stem = "test_" + "_".join(parts)
        if not any(TESTS.glob(f"{stem}.py")):
            missing.append(f"{name} -> tests/{stem}.py")
    assert not missing, "modules without a test file of their own:\n" + "\n".join(missing)


# ----------------------------------------------------------------------------- the checker itself


def test_a_wrong_arrow_is_reported_with_file_line_and_rule(tmp_path: Path) -> None:
    source = tmp_path / "mnc_teach" / "cascade.py"
    source.parent.mkdir()
    source.write_text(
        "import torch\n\n\ndef build():\n    from mnc_teach.engine.loop import train\n"
    )
    modules = {"mnc_teach.cascade", "mnc_teach.engine.loop"}
    arrows = arrows_of("mnc_teach.cascade", source, modules)
    assert [(a.target, a.line, a.lazy) for a in arrows] == [("mnc_teach.engine.loop", 5, True)]
    relative = [Arrow(a.source, a.target, Path("x"), a.line, a.lazy) for a in arrows]
    problems = layering_violations(relative)
    assert any("cascade -> engine" in p and "the model never imports engine" in p for p in problems)
    assert any("inside a function" in p for p in problems)


def test_relative_and_package_imports_resolve_to_modules(tmp_path: Path) -> None:
    source = tmp_path / "mnc_teach" / "evaluation" / "sds.py"
    source.parent.mkdir(parents=True)
    source.write_text("from .coco import encode_mask\nfrom mnc_teach.viz import common\n")
    modules = {"mnc_teach.evaluation.coco", "mnc_teach.viz.common", "mnc_teach.evaluation.sds"}
    arrows = arrows_of("mnc_teach.evaluation.sds", source, modules)
    assert [a.target for a in arrows] == ["mnc_teach.evaluation.coco", "mnc_teach.viz.common"]


def test_a_cycle_is_found() -> None:
    def arrow(a: str, b: str) -> Arrow:
        return Arrow(a, b, Path("x"), 1, False)

    arrows = [
        arrow("mnc_teach.engine.loop", "mnc_teach.engine.checkpoint"),
        arrow("mnc_teach.engine.checkpoint", "mnc_teach.engine.loop"),
        arrow("mnc_teach.engine.loop", "mnc_teach.config"),
    ]
    assert import_cycles(arrows) == [
        ["mnc_teach.engine.checkpoint", "mnc_teach.engine.loop", "mnc_teach.engine.checkpoint"]
    ]
