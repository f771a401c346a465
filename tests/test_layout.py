"""The layout is the map: a module's folder names its layer, imports point down the layers, no stage imports
another, the package has no import cycle, counting the imports made inside functions, no SQL is written outside
the store, and only the training methods' own modules and their registry tell one method from another by name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "stargate_lite"
# Bottom to top: a module imports from its own layer and the layers below it, never above.
LAYERS = ("foundations", "engines", "methods", "stages", "evaluation", "commands", "environment", "loop", "cli")
FOLDERS = ("engines", "methods", "stages", "evaluation", "commands")
FOUNDATIONS = {"facts", "errors", "prompts", "progress", "recipe", "runs", "tracking", "training_methods"}
# Foundations that are packages: the package and every module in it are foundations (the store, split by table).
FOUNDATION_PACKAGES = {"store"}
# Modules (or folders) at the package's root above the foundations, by layer; "": the package's face, __init__.py.
TOP = {"environment": "environment", "loop": "loop", "cli": "cli", "__main__": "cli", "": "cli"}
# Modules of a stage beside the stage's own module: they may import each other, and nothing else in stages/.
STAGE_OF = {"builtin_data": "data", "train_processes": "train"}
# SQL in a string: a statement's opening words as queries write them, which prose does not put side by side.
SQL = re.compile(r"\bselect\s+(distinct\s+)?(\*|\w+\s*\(|[\w.]+\s*(,|\bas\b|\bfrom\b))"
                 r"|\binsert\s+(or\s+\w+\s+)?into\s+\w+|\bcreate\s+(unique\s+)?(table|index|view|trigger)\b"
                 r"|\bupdate\s+\w+\s+set\s+\w+\s*=|\bdelete\s+from\s+\w+|\bdrop\s+(table|index|view)\b"
                 r"|\bpragma\s+\w+|\bbegin\s+(immediate|exclusive|deferred|transaction)\b"
                 r"|\bwhere\s+[\w.]+\s*(=|!=|<|>|\bin\b|\blike\b|\bis\b)\s*(\?|:\w+|'|\d|\()", re.IGNORECASE)
TRANSACTION_END = re.compile(r"(COMMIT|ROLLBACK)\b")  # upper case only: a run session's "commit" is no SQL


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


def is_sql(text: str) -> bool:
    flat = " ".join(text.split())
    return bool(SQL.search(flat) or TRANSACTION_END.match(flat))


def literal(node: ast.AST) -> str | None:
    """A string literal's text; an f-string's with ? for each value it puts in."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else "?" for part in node.values)
    return None


def strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each string literal of a module but its docstrings, which are prose."""
    tree = ast.parse(path.read_text())
    skip = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    skip |= {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    return [(node.lineno, text) for node in ast.walk(tree)
            if id(node) not in skip and (text := literal(node)) is not None]


def store_statements() -> list[tuple[str, str]]:
    """(where, text) of each statement the store hands SQLite: the literal (or the local variable holding one) that
    a call of rows, value, execute or query is given, and each of browse's canned queries."""
    found: dict[int, tuple[str, str]] = {}  # by the literal's node: a nested function's calls are walked twice
    for path in sorted((PACKAGE / "store").glob("*.py")):
        tree = ast.parse(path.read_text())
        given = [value for node in ast.walk(tree) if isinstance(node, ast.Dict)
                 for key, value in zip(node.keys, node.values) if isinstance(key, ast.Constant) and key.value == "sql"]
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef):
                local = {target.id: node.value for node in ast.walk(fn) if isinstance(node, ast.Assign)
                         for target in node.targets if isinstance(target, ast.Name)}
                given += [local.get(node.args[0].id) if isinstance(node.args[0], ast.Name) else node.args[0]
                          for node in ast.walk(fn) if isinstance(node, ast.Call) and node.args
                          and isinstance(node.func, ast.Attribute) and node.func.attr in ("rows", "value", "execute",
                                                                                         "query")]
        found |= {id(query): (f"store/{path.name}:{query.lineno}", text) for query in given
                  if query is not None and (text := literal(query)) is not None}
    return list(found.values())


def graph() -> dict[str, set[str]]:
    found = modules()
    return {module: {target for target, _ in imports(module, path, set(found))} for module, path in found.items()}


def layer(module: str) -> str:
    folder = module.split(".")[0]
    if folder in FOLDERS:
        return folder
    if module in FOUNDATIONS or folder in FOUNDATION_PACKAGES:
        return "foundations"
    if folder in TOP:  # a top layer that is a folder: the environment and its trainers' adapters
        return TOP[folder]
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


def test_no_module_outside_the_store_holds_sql():
    wrong = [f"stargate_lite/{path.relative_to(PACKAGE)}:{line}: {' '.join(text.split())[:70]!r}"
             for module, path in modules().items() if module.split(".")[0] != "store"
             for line, text in strings(path) if is_sql(text)]
    assert not wrong, "SQL outside stargate_lite/store/ (give the store a method for it):\n" + "\n".join(wrong)


def test_the_sql_check_knows_every_statement_the_store_runs():
    """The check above would pass vacuously on a scan blind to SQL: each statement the store runs reads as SQL."""
    statements = store_statements()
    assert len(statements) > 60
    missed = [f"{where}: {' '.join(text.split())[:70]!r}" for where, text in statements if not is_sql(text)]
    assert not missed, "statements the SQL check does not recognise:\n" + "\n".join(missed)


def test_only_the_methods_and_their_registry_tell_methods_apart_by_name():
    """A training method's behaviour is its module's (stargate_lite/methods/): elsewhere no comparison, dictionary
    key or list of names names one, so that adding a method is adding its module."""
    from stargate_lite.training_methods import method_names

    names = set(method_names())
    assert {"sft", "dpo", "rloo", "grpo"} <= names

    def a_name(node) -> bool:
        return isinstance(node, ast.Constant) and node.value in names

    wrong = []
    for module, path in modules().items():
        if layer(module) == "methods" or module == "training_methods":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
            elif isinstance(node, ast.Dict):
                operands = [key for key in node.keys if key is not None]
            elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                operands = node.elts
            else:
                continue
            if any(a_name(operand) for operand in operands):
                wrong.append(f"stargate_lite/{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not wrong, "a training method named outside stargate_lite/methods/: " + ", ".join(wrong)


ROOT = PACKAGE.parent


def _sys_path_edits(tree: ast.AST) -> int:
    return sum(isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
               and node.value.id == "sys" for node in ast.walk(tree))


def test_tests_never_import_benchmarks():
    """Tests exercise the package; what a test and a benchmark share lives in tests/ or in the package."""
    wrong = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            wrong += [f"{path.name} imports {name}" for name in names if name.split(".")[0] == "benchmarks"]
        if _sys_path_edits(tree) and "benchmarks" in path.read_text():
            wrong.append(f"{path.name} edits sys.path")
    assert not wrong, "\n".join(wrong)


def test_benchmarks_import_the_package_as_a_user_does():
    """A benchmark runs as `python -m benchmarks.NAME` from the repository's root: no sys.path edits, and only the
    package's public names (a private one it needs is made public, with a docstring)."""
    wrong = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text())
        if _sys_path_edits(tree):
            wrong.append(f"{path.name} edits sys.path")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "stargate_lite":
                private = [part for part in node.module.split(".") if part.startswith("_")]
                private += [alias.name for alias in node.names if alias.name.startswith("_")]
                wrong += [f"{path.name} imports {node.module}.{name}" for name in private]
    assert not wrong, "\n".join(wrong)
