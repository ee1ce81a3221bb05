"""The import graph of `oln`: no cycles, and a command layer that loads without torch or pycocotools."""

from __future__ import annotations

import subprocess
import sys

from oln.code_hash import all_modules, import_graph, module_imports


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_cycle_finder_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_oln():
    # module-level imports, `if TYPE_CHECKING:` blocks included; imports inside functions are
    # the lazy imports of heavy libraries and do not count
    assert import_cycles(import_graph(lazy=False)) == []


def test_commands_never_import_the_cli():
    commands = [m for m in all_modules() if m.startswith("oln.commands.")]
    assert "oln.commands.registry" in commands
    assert not [m for m in commands if "oln.cli" in module_imports(m, lazy=True)]


def test_command_layer_loads_without_torch_or_pycocotools():
    code = ("import sys, oln.cli; oln.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'pycocotools', 'torchvision') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
