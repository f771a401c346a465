"""The layout is the map: a module's folder names its layer, imports point down the layers, no stage imports
another, and the package has no import cycle, counting the imports made inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "stargate_lite"
# Bottom to top: a module imports from its own layer and the layers below it, never above.
LAYERS = ("foundations", "engines", "stages", "evaluation", "commands", "loop", "cli")
FOLDERS = ("engines", "stages", "evaluation", "commands")
FOUNDATIONS = {"facts", "errors", "prompts", "progress", "recipe", "runs", "tracking"}
# Foundations that are packages: the package and every module in it are foundations (the store, split by table).
FOUNDATION_PACKAGES = {"store"}
TOP = {"loop": "loop", "cli": "cli", "__main__": "cli", "": "cli"}  # "": the package's face, __init__.py
# Modules of a stage beside the stage's own module: they may import each other, and nothing else in stages/.
STAGE_OF = {"builtin_data": "data", "train_processes": "train"}


def module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_of(path): path for path in PACKAGE.rglob("*.py")}


def imports(module: str, path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported module, made inside a function) for every import of the package's own modules."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nested = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "stargate_lite":
                target = node.module.removeprefix("stargate_lite").removeprefix(".")
            else:
                continue
            names = [f"{target}.{alias.name}".lstrip(".") for alias in node.names]
            targets = [name for name in names if name in known] or [target]
        elif isinstance(node, ast.Import):
            targets = [alias.name.removeprefix("stargate_lite").removeprefix(".") for alias in node.names
                       if alias.name.split(".")[0] == "stargate_lite"]
        else:
            continue
        found += [(target, id(node) in nested) for target in targets if target != module and target in known]
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {module: {target for target, _ in imports(module, path, set(found))} for module, path in found.items()}


def layer(module: str) -> str:
    folder = module.split(".")[0]
    if folder in FOLDERS:
        return folder
    if module in FOUNDATIONS or folder in FOUNDATION_PACKAGES:
        return "foundations"
    assert module in TOP, f"stargate_lite/{module}.py is in no layer: move it into one (or add it to this test)"
    return TOP[module]


def test_every_module_is_in_a_layer_folder():
    found = modules()
    assert len(found) > 30
    for module in found:
        assert layer(module) in LAYERS, module
    for folder in (*FOLDERS, *FOUNDATION_PACKAGES):
        assert (PACKAGE / folder / "__init__.py").exists(), f"stargate_lite/{folder} is no package"


def test_the_walk_sees_imports_made_inside_functions():
    """The rules below would pass vacuously on a walk that missed lazy imports (most of the package's are)."""
    found = modules()
    lazy = imports("cli", found["cli"], set(found))
    assert ("loop", True) in lazy and ("evaluation.evaluate", True) in lazy


def test_imports_point_down_the_layers():
    wrong = [f"{module} ({layer(module)}) imports {target} ({layer(target)})"
             for module, targets in graph().items() for target in targets
             if LAYERS.index(layer(target)) > LAYERS.index(layer(module))]
    assert not wrong, "\n".join(wrong)


def test_no_stage_imports_another():
    def stage(module: str) -> str:
        name = module.split(".")[1]
        return STAGE_OF.get(name, name)

    stages = {module: targets for module, targets in graph().items() if module.startswith("stages.")}
    assert {"stages.simulate", "stages.score", "stages.train"} <= set(stages)
    wrong = [f"{module} imports {target}" for module, targets in stages.items() for target in targets
             if target.startswith("stages.") and stage(target) != stage(module)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, str] = {}

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (found := cycle_from(target, path + [target])):
                return found
        state[module] = "done"
        return None

    for module in sorted(edges):
        if module not in state:
            found = cycle_from(module, [module])
            assert found is None, "import cycle: " + " -> ".join(found)
