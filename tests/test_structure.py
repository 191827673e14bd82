"""The package's shape: no import cycle (lazy imports inside functions count), no module that
uses another module's private names, and no module over ~400 lines without a stated reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LONG = 420  # "about 400 lines"
REASON = "Over 400 lines because"


def package_modules() -> dict[str, Path]:
    """{dotted module name: file} of nag_engine, with the top-level kernels/ as
    nag_engine.kernels (setup.py installs it there)."""
    modules = {}
    for base, prefix in (
        (ROOT / "nag_engine", "nag_engine"),
        (ROOT / "kernels", "nag_engine.kernels"),
    ):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([prefix, *parts])] = path
    return modules


MODULES = package_modules()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports_of(name: str) -> list[tuple[str, list[str], ast.AST]]:
    """(imported module, imported names, node) for every import in the module, anywhere."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if is_package(name) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [alias.name for alias in node.names], node))
    return found


def import_graph() -> dict[str, set[str]]:
    """Edges module -> project module it imports (a `from pkg import sub` counts as sub)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for target, names, _ in imports_of(name):
            names = [n for n in names if n != "_C"]  # the compiled extension imports nothing
            if not names and target == "nag_engine":
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if subs:
                graph[name].update(subs)
            elif target in MODULES:
                graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules, or []."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_the_package_modules():
    graph = import_graph()
    assert graph["nag_engine.sampler"], "the graph found no imports: the walker is broken"
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_private_names_of_another():
    offenders = []
    for name in MODULES:
        project_aliases = set()
        for target, names, node in imports_of(name):
            if not target.startswith("nag_engine"):
                continue
            private = [
                n for n in names if n.startswith("_") and not n.startswith("__") and n != "_C"
            ]
            if private:
                offenders.append(f"{name}:{node.lineno} imports {private} from {target}")
            if isinstance(node, ast.ImportFrom):
                project_aliases.update(
                    alias.asname or alias.name
                    for alias in node.names
                    if f"{target}.{alias.name}" in MODULES
                )
        tree = ast.parse(MODULES[name].read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in project_aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr != "_C"
            ):
                offenders.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not offenders, "\n".join(offenders)


def test_no_module_reaches_into_private_members_of_other_objects():
    """`obj._name` only on self / cls (and the library modules' own private API is not ours to
    use either); a marker the package sets on a foreign object is named _nag_engine_*."""
    offenders = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id not in ("self", "cls")
                and node.attr.startswith("_")
                and not node.attr.startswith(("__", "_nag_engine"))
                and node.attr != "_C"
                and node.attr != "_SubParsersAction"  # add_subparsers()'s type: not exported
                and node.attr != "_scaled_mm"  # torch's float8 matmul has no public name yet
            ):
                offenders.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_long_module_says_why_it_is_long(name):
    text = MODULES[name].read_text()
    lines = text.count("\n")
    if lines > LONG:
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert REASON in doc, (
            f"{name} has {lines} lines: split it, or say at its top why not "
            f"('{REASON} ...' in the module docstring)"
        )
