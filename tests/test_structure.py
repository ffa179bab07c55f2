"""The house's structure, read from the source with ``ast`` (DESIGN.md, "Keeping the house easy to live in"):

- imports point down the layers below, never up, and never in a circle: every import counts, at module level or
  inside a function, ``import marlrun.x``, ``from marlrun.x import y``, ``from marlrun import x`` (the module x),
  relative ones and ``importlib.import_module("marlrun.x")``;
- every module has a layer: a new one is placed in ``LAYERS`` when it is added;
- only marlrun/build.py builds algorithms and environments from the registry, and train, eval and bench all build
  their runs with its ``build_run``.

The checkers are tested on small made-up packages too, so that each of these tests can fail.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "marlrun"

# Top to bottom. A module may import from its own layer and the layers below it, never from one above. A name
# stands for that module, or for a package and every module in it (``marlrun.report`` is report/*.py); the root
# package ``marlrun`` stands only for marlrun/__init__.py.
LAYERS = [
    ["marlrun.cli"],  # the `marlrun` command
    ["marlrun.sweep", "marlrun.evaluation", "marlrun.bench", "marlrun.report"],  # the commands besides train's loop
    ["marlrun.runner",  # the loop
     "marlrun.search",  # a finished run's objective, read back from its folder (config's SUMMARY_METRICS)
     "marlrun.return_plot"],  # the loop's picture of a distributional critic at evaluation
    ["marlrun.build"],  # the one builder of a run
    ["marlrun.config", "marlrun.registry"],  # the schemas and the one list of algorithms and environments
    ["marlrun.algos"],
    ["marlrun.envs", "marlrun.replay", "marlrun.nn", "marlrun.hardware",  # what algorithms are made of
     "marlrun.metrics", "marlrun.loggers", "marlrun.checkpoint", "marlrun.runfolder",  # a run folder's files
     "marlrun.render"],  # drawing helpers the environments draw their frames with
    ["marlrun.errors", "marlrun.console", "marlrun"],  # leaves (the root package's __init__.py is empty)
]

BUILDER = "marlrun.build"  # the only module that builds algorithms and environments from the registry
BUILT_WITH_BUILD_RUN = ("marlrun.runner", "marlrun.evaluation", "marlrun.bench")  # train, eval, bench


# ---------------------------------------------------------------------------- reading the source
def module_files(package: Path) -> dict[str, Path]:
    """Module name -> file, for every .py file of ``package`` (a folder); a package is named by its __init__.py."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` if it is a module of the package, else its longest prefix that is one (``marlrun.x.func``: marlrun.x)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import of a module of the package in ``path``, at any depth."""
    root = next(iter(modules)).split(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def add(name: str | None, line: int) -> None:
        if name and (name == root or name.startswith(root + ".")) and (known := _known(name, modules)):
            found.append((known, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per dot after the first
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if alias.name != "*" and submodule in modules else base, node.lineno)
        elif isinstance(node, ast.Call):  # importlib.import_module("marlrun.x"), __import__("marlrun.x")
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                add(node.args[0].value, node.lineno)
    return found


def import_graph(package: Path) -> dict[str, dict[str, int]]:
    """module -> {module it imports: the first line that imports it}."""
    modules = module_files(package)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        for target, line in imports_of(module, path, modules):
            if target != module:
                edges.setdefault(target, line)
    return graph


# ---------------------------------------------------------------------------- the checks
def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle, as a path ``[a, b, ..., a]``, through each group of modules that import each other in a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, {})):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)

    cycles = []
    for group in groups:  # the shortest way from the group's first module back to itself, inside the group
        start, members = group[0], set(group)
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            following = []
            for node in frontier:
                for target in sorted(graph.get(node, {})):
                    if target == start:
                        cycle = paths[node] + [start]
                        break
                    if target in members and target not in paths:
                        paths[target] = paths[node] + [target]
                        following.append(target)
                if cycle:
                    break
            frontier = following
        cycles.append(cycle)
    return cycles


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    """The index of ``module``'s layer (0 at the top), or None when no layer names it or its package."""
    best, best_length = None, -1
    for number, names in enumerate(layers):
        for name in names:  # the root package (a name without a dot) covers only its own __init__.py
            covers = module == name or ("." in name and module.startswith(name + "."))
            if covers and len(name) > best_length:
                best, best_length = number, len(name)
    return best


def unplaced(graph: dict[str, dict[str, int]], layers: list[list[str]]) -> list[str]:
    return sorted(module for module in graph if layer_of(module, layers) is None)


def stale(graph: dict[str, dict[str, int]], layers: list[list[str]]) -> list[str]:
    """Names in ``layers`` that are no module or package of the source any more."""
    return [name for names in layers for name in names
            if not any(module == name or module.startswith(name + ".") for module in graph)]


def upward(graph: dict[str, dict[str, int]], layers: list[list[str]]) -> list[str]:
    """Every import of a module from a layer above its own, in words."""
    found = []
    for module, edges in sorted(graph.items()):
        own = layer_of(module, layers)
        for target, line in sorted(edges.items(), key=lambda edge: edge[1]):
            theirs = layer_of(target, layers)
            if own is not None and theirs is not None and theirs < own:
                found.append(f"{module} (layer {own}, line {line}) imports {target} (layer {theirs}, above it)")
    return found


def builds_outside_the_builder(package: Path, builder: str) -> list[str]:
    """Calls that build from the registry (``<entry>.cls(...)``, ``<entry>.make(...)``) or with
    ``hydra.utils.instantiate`` in any module but ``builder``. ``x.make(...)`` on a module the file imports (a
    library's ``gym.make``) is not a registry entry and is allowed."""
    found = []
    for module, path in module_files(package).items():
        if module == builder:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = {(alias.asname or alias.name).split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("cls", "make"):
                receiver = node.func.value
                if node.func.attr == "make" and isinstance(receiver, ast.Name) and receiver.id in imported:
                    continue
                found.append(f"{module} line {node.lineno}: .{node.func.attr}(...) builds from the registry; "
                             f"build with {builder}.build_run (or its make_env / make_algorithm)")
            elif isinstance(node, ast.Attribute) and node.attr in ("instantiate", "call") and \
                    isinstance(node.value, (ast.Name, ast.Attribute)) and ast.unparse(node.value).endswith("utils"):
                found.append(f"{module} line {node.lineno}: {ast.unparse(node)} builds outside {builder}")
            elif isinstance(node, ast.ImportFrom) and node.module == "hydra.utils" and \
                    any(alias.name in ("instantiate", "call") for alias in node.names):
                found.append(f"{module} line {node.lineno}: imports hydra.utils.instantiate; build in {builder}")
    return found


def calls(path: Path, name: str) -> bool:
    """Whether the file calls a function ``name`` (``name(...)`` or ``x.name(...)``)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Name) and func.id == name) or (isinstance(func, ast.Attribute) and func.attr == name):
                return True
    return False


# ---------------------------------------------------------------------------- marlrun
@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE)


def test_the_graph_sees_imports_at_module_and_function_level(graph):
    assert "marlrun.config" in graph["marlrun.build"] and "marlrun.registry" in graph["marlrun.config"]
    assert "marlrun.report.reliable" in graph["marlrun.report.stats"]
    assert {"marlrun.bench", "marlrun.evaluation", "marlrun.report"} <= set(graph["marlrun.cli"])


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_every_module_has_a_layer(graph):
    assert not unplaced(graph, LAYERS), (f"modules without a layer: {', '.join(unplaced(graph, LAYERS))}; "
                                        "place each in LAYERS of tests/test_structure.py")
    assert not stale(graph, LAYERS), f"LAYERS names modules that do not exist: {', '.join(stale(graph, LAYERS))}"


def test_imports_point_down_the_layers(graph):
    found = upward(graph, LAYERS)
    assert not found, "imports that point up the layers:\n" + "\n".join(found)


def test_only_build_builds_algorithms_and_environments():
    found = builds_outside_the_builder(PACKAGE, BUILDER)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module", BUILT_WITH_BUILD_RUN)
def test_train_eval_and_bench_build_their_runs_with_build_run(module):
    path = module_files(PACKAGE)[module]
    assert calls(path, "build_run"), f"{path} does not call build_run: train, eval and bench build a run one way"


# ---------------------------------------------------------------------------- the checkers can fail
def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return package


def test_a_cycle_through_a_function_level_import_is_found_and_named(tmp_path):
    package = write_package(tmp_path, {
        "a.py": "from pkg.b import f\n",
        "b.py": "def f():\n    from pkg import c\n    return c\n",
        "c.py": "import pkg.a\n",
        "d.py": "from pkg.a import *\n",
    })
    assert find_cycles(import_graph(package)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert find_cycles({"x": {"y": 1}, "y": {}}) == []


def test_relative_and_importlib_imports_are_edges(tmp_path):
    package = write_package(tmp_path, {
        "sub/__init__.py": "from .inner import g\n",
        "sub/inner.py": "from .. import top\nfrom ..top import h\n",
        "top.py": "import importlib\n\ndef load():\n    return importlib.import_module('pkg.sub')\n",
    })
    graph = import_graph(package)
    assert graph["pkg.sub"] == {"pkg.sub.inner": 1}
    assert graph["pkg.sub.inner"] == {"pkg.top": 1}
    assert graph["pkg.top"] == {"pkg.sub": 4}
    assert find_cycles(graph) == [["pkg.sub", "pkg.sub.inner", "pkg.top", "pkg.sub"]]


def test_an_upward_import_and_an_unplaced_module_are_found(tmp_path):
    package = write_package(tmp_path, {"top.py": "", "low.py": "def f():\n    import pkg.top\n", "new.py": ""})
    layers = [["pkg.top"], ["pkg.low", "pkg"]]
    graph = import_graph(package)
    assert upward(graph, layers) == ["pkg.low (layer 1, line 2) imports pkg.top (layer 0, above it)"]
    assert unplaced(graph, layers) == ["pkg.new"]  # the root package places only its own __init__.py
    assert stale(graph, [["pkg.gone"], ["pkg"]]) == ["pkg.gone"]
    assert upward(graph, [["pkg.low"], ["pkg.top", "pkg"]]) == []


def test_building_outside_the_builder_is_found(tmp_path):
    package = write_package(tmp_path, {
        "build.py": "def build(e, cfg):\n    return e.cls(cfg)\n",
        "runner.py": "from pkg.registry import entry\n\ndef run(cfg):\n    return entry('env', 'x').make(cfg)\n",
        "other.py": "import hydra\n\ndef run(cfg):\n    return hydra.utils.instantiate(cfg)\n",
        "gymish.py": "import gym\n\ndef run():\n    return gym.make('CartPole-v1')\n",
    })
    found = builds_outside_the_builder(package, "pkg.build")
    assert [f.split(":")[0] for f in found] == ["pkg.other line 4", "pkg.runner line 4"]
    assert calls(package / "build.py", "cls") and not calls(package / "gymish.py", "build_run")
