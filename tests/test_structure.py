"""The core's boundaries, checked on the source: public seams only, no import circles.

* Extensions (patterns/, the relay, durable clients, AsyncNode, the
  pipeline worker) use public names only: no ``something._private`` access
  on anything but ``self``/``cls`` (or a module they import).
* No module of meshq (patterns included) imports one that imports it back,
  directly or through others, counting imports under ``TYPE_CHECKING``.
  Imports inside functions are lazy by intent (``Node.worker`` loads the
  worker pattern on first use) and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Packages and modules that may use only the public seams of the core.
EXTENSIONS = ["patterns", "meshq/relay", "meshq/durable", "meshq/aio.py", "patterns/worker.py"]


def _files(*paths: str) -> list[Path]:
    found: list[Path] = []
    for name in paths:
        path = ROOT / name
        found.extend([path] if path.is_file() else sorted(path.rglob("*.py")))
    return found


def private_accesses(source: str) -> list[str]:
    """``x._name`` accesses in ``source`` whose ``x`` is not self, cls or an imported module."""
    tree = ast.parse(source)
    modules = {"self", "cls"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in modules)
        ):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and _getattr_name(node).startswith("_")
            and not (_getattr_name(node).startswith("__"))
        ):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")  # the same, spelt getattr
    return found


def _getattr_name(node: ast.AST) -> str:
    """The attribute a ``getattr(x, "name", ...)`` call names, else ""."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "getattr"
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    ):
        return node.args[1].value
    return ""


def runtime_accesses(source: str) -> list[str]:
    """Uses of a node's ``runtime`` (its internals), as an attribute or through getattr."""
    return [
        f"line {node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.expr)
        and (
            (isinstance(node, ast.Attribute) and node.attr == "runtime")
            or _getattr_name(node) == "runtime"
        )
    ]


def test_the_check_finds_private_accesses() -> None:
    source = "import argparse\nnode._limits\nself.node._x\nself._ok\nargparse._Action\n"
    assert private_accesses(source) == ["line 2: node._limits", "line 3: self.node._x"]
    assert private_accesses("getattr(node, '_replies', None)\ngetattr(x, '__doc__')\n") == [
        "line 1: getattr(node, '_replies', None)"
    ]
    assert runtime_accesses("getattr(node, 'runtime', None)\nnode.runtime.x\nnode.run\n") == [
        "line 1: getattr(node, 'runtime', None)",
        "line 2: node.runtime",
    ]


def test_relay_durable_and_patterns_reach_the_node_through_its_seams_only() -> None:
    """Not through ``node.runtime``: MeshNode (meshq/seams.py) is all they may use.

    AsyncNode (meshq/aio.py) is a facade of the core like Node and may.
    """
    offences = {
        str(path.relative_to(ROOT)): found
        for path in _files("patterns", "meshq/relay", "meshq/durable")
        if (found := runtime_accesses(path.read_text()))
    }
    assert not offences, offences


def test_extensions_use_only_public_seams() -> None:
    offences = {
        str(path.relative_to(ROOT)): found
        for path in _files(*EXTENSIONS)
        if (found := private_accesses(path.read_text()))
    }
    assert not offences, offences


def state_registrations(source: str) -> list[str]:
    """Calls of ``<something>.state.track_consumer(...)``: the node's internals, not its seam."""
    return [
        f"line {node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "track_consumer"
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "state"
    ]


def test_the_registration_check_finds_a_reach_into_the_state() -> None:
    source = "node.runtime.state.track_consumer(c)\nnode.track_consumer(c)\n"
    assert state_registrations(source) == ["line 1: node.runtime.state.track_consumer(c)"]


def test_durable_consumers_register_through_the_node_seam_only() -> None:
    """``Node.track_consumer`` (meshq/seams.py) is the one way in; the consumers
    call it themselves, so AsyncNode and the relay need not."""
    offences = {
        str(path.relative_to(ROOT)): found
        for path in _files("meshq", "patterns")
        if path.name != "node_pubsub.py"  # the seam itself
        and (found := state_registrations(path.read_text()))
    }
    assert not offences, offences


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] == "patterns":
        parts = ["meshq", *parts]  # installed as meshq.patterns
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_imports(path: Path, known: set[str]) -> set[str]:
    """The meshq modules ``path`` imports at load time (TYPE_CHECKING blocks included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def resolve(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]  # a name imported from a module
        if target and target != name:
            found.add(target)

    def visit(body: list[ast.stmt]) -> None:
        for statement in body:
            if isinstance(statement, ast.Import):
                for alias in statement.names:
                    resolve(alias.name)
            elif isinstance(statement, ast.ImportFrom):
                if statement.level:
                    base = package.split(".")
                    base = base[: len(base) - statement.level + 1]
                    module = ".".join(base + ([statement.module] if statement.module else []))
                else:
                    module = statement.module or ""
                for alias in statement.names:
                    resolve(f"{module}.{alias.name}")
            elif isinstance(statement, (ast.If, ast.Try)):
                # TYPE_CHECKING blocks and optional imports count too.
                visit(statement.body)
                visit(statement.orelse)
                for handler in getattr(statement, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = _files("meshq", "patterns")
    known = {_module_name(path) for path in paths}
    return {_module_name(path): module_imports(path, known) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle in ``graph`` (module -> modules it imports), or [] if none.

    A package's ``__init__`` importing its own submodules is not a cycle
    with them unless a submodule imports the package back.
    """
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_graph_sees_type_checking_imports(tmp_path: Path) -> None:
    graph = import_graph()
    assert "meshq.seams" in graph["meshq.durable.lookup"]  # only under TYPE_CHECKING there
    assert "meshq.node" in graph["meshq"]


def test_no_import_cycles() -> None:
    graph = import_graph()
    # The package's __init__ re-exports every public module; submodules that
    # import "meshq" itself (patterns do) would close a loop through it.
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))


def test_the_core_imports_no_pattern() -> None:
    graph = import_graph()
    core = [module for module in graph if not module.startswith("meshq.patterns")]
    offenders = {m: graph[m] for m in core if any(t.startswith("meshq.patterns") for t in graph[m])}
    assert not offenders, offenders


#: Sleeps that stay, and why: the asyncio reply reader pauses after an
#: unexpected error so that a bug cannot spin it. (A blocking publish waits
#: for news of room on a Condition or an asyncio.Event: publishing.BlockingWait.)
ALLOWED_SLEEPS = {"meshq/aio.py": 1}


def sleeps(source: str) -> int:
    """Calls of time.sleep / asyncio.sleep (however imported) in ``source``."""
    tree = ast.parse(source)
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "sleep":
                count += 1
    return count


def test_library_code_waits_on_conditions_sockets_or_deadlines_not_sleeps() -> None:
    found = {
        str(path.relative_to(ROOT)): n
        for path in _files("meshq", "patterns")
        if (n := sleeps(path.read_text()))
    }
    assert found == ALLOWED_SLEEPS


def layout_rows(readme: str) -> dict[str, str]:
    """The README's layout table: each row's first cell (paths) -> the whole row."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return {line.split("|")[1]: line for line in section.splitlines() if line.startswith("| `")}


def unnamed_modules(rows: dict[str, str], modules: list[str]) -> list[str]:
    """Modules (paths from the root) that no layout row names.

    A module is named by its path, or by its file name in the row of its
    package (``meshq/relay/`` names ``store.py``).
    """
    cells = " ".join(rows)
    missing = []
    for module in modules:
        package, _, filename = module.rpartition("/")
        package_row = next((row for cell, row in rows.items() if f"`{package}/`" in cell), "")
        if f"`{module}`" not in cells and f"`{filename}`" not in package_row:
            missing.append(module)
    return missing


def test_the_layout_check_finds_an_unnamed_module() -> None:
    rows = {" `meshq/relay/` ": "| `meshq/relay/` | `store.py` |", " `meshq/a.py` ": ""}
    assert unnamed_modules(rows, ["meshq/a.py", "meshq/relay/store.py"]) == []
    assert unnamed_modules(rows, ["meshq/b.py", "meshq/relay/wal.py"]) == [
        "meshq/b.py",
        "meshq/relay/wal.py",
    ]


def test_the_readme_layout_names_every_module() -> None:
    modules = [
        str(path.relative_to(ROOT))
        for path in _files("meshq", "patterns")
        if path.name != "__init__.py"
    ]
    rows = layout_rows((ROOT / "README.md").read_text())
    assert unnamed_modules(rows, modules) == []
