"""
revproxy's modules import each other without a cycle.

Every import counts: at module level, inside functions, and under C{if
TYPE_CHECKING:} (a cycle of annotations is still two modules that cannot be
read one without the other).  The graph is read from the source with
L{ast}, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import revproxy

#: The directory of the package checked.
PACKAGE = Path(revproxy.__file__).parent


def moduleNames(root: Path) -> dict[str, Path]:
    """
    The dotted name of every module of the package in C{root}, with its
    file; a package is named by its C{__init__.py}.
    """
    names: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _imported(name: str, path: Path, modules: Mapping[str, Path]) -> Iterator[str]:
    """
    The modules of C{modules} that the module C{name}, in C{path}, imports
    anywhere in its source.
    """
    isPackage = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative: level 1 is the module's own package.
                package = name.split(".")
                if not isPackage:
                    package = package[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                # "from package import module" imports the module;
                # "from module import name" the module.
                full = f"{base}.{alias.name}"
                if full in modules:
                    yield full
                elif base in modules:
                    yield base


def importGraph(root: Path) -> dict[str, set[str]]:
    """
    Each module of the package in C{root} with the modules of the package
    it imports.
    """
    modules = moduleNames(root)
    return {
        name: set(_imported(name, path, modules)) - {name}
        for name, path in modules.items()
    }


def findCycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """
    One cycle of each strongly connected component of C{graph} that has
    more than one module, as the modules in import order with the first
    one again at the end: C{["a", "b", "a"]}.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    onStack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        onStack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in onStack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                other = stack.pop()
                onStack.discard(other)
                component.add(other)
                if other == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycleIn(graph, component) for component in components]


def _cycleIn(graph: Mapping[str, set[str]], component: set[str]) -> list[str]:
    """
    A shortest cycle through the first module (by name) of C{component}, a
    strongly connected component of C{graph}.
    """
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    for node in queue:
        for other in sorted(graph[node] & component):
            if other == start:
                return [*paths[node], start]
            if other not in paths:
                paths[other] = [*paths[node], other]
                queue.append(other)
    raise AssertionError(f"{sorted(component)} is not strongly connected")


class ImportCycleTests(SynchronousTestCase):
    """
    revproxy has no import cycle.
    """

    def test_noCycles(self) -> None:
        """
        No module of revproxy imports, through any chain of imports
        (annotations only included), a module that imports it.
        """
        cycles = findCycles(importGraph(PACKAGE))
        self.assertEqual(
            cycles,
            [],
            "import cycles: " + "; ".join(" -> ".join(c) for c in cycles),
        )

    def test_graphIsRead(self) -> None:
        """
        The graph is revproxy's: it has its modules and their imports.
        """
        graph = importGraph(PACKAGE)
        self.assertIn("revproxy.proxy.http1", graph["revproxy.proxy.frontend"])
        self.assertIn("revproxy.acme", graph["revproxy.acme.issuer"])


class FindCyclesTests(SynchronousTestCase):
    """
    L{importGraph} and L{findCycles} see every kind of import, so that
    L{ImportCycleTests} fails when a cycle comes back.
    """

    def package(self, files: Mapping[str, str]) -> Path:
        """
        A package C{pkg} in a new directory, with C{files} (paths relative
        to it, and their source).
        """
        root = Path(self.mktemp()) / "pkg"
        for name, source in {"__init__.py": "", **files}.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
        return root

    def assertCycle(self, files: Mapping[str, str], cycle: list[str]) -> None:
        """
        The package of C{files} has exactly the one cycle C{cycle}.
        """
        self.assertEqual(findCycles(importGraph(self.package(files))), [cycle])

    def test_plain(self) -> None:
        """
        Two modules that import each other with C{import} and C{from ...
        import} make a cycle.
        """
        self.assertCycle(
            {"a.py": "import pkg.b\n", "b.py": "from pkg.a import x\n"},
            ["pkg.a", "pkg.b", "pkg.a"],
        )

    def test_typeChecking(self) -> None:
        """
        An import made only for type checking counts.
        """
        self.assertCycle(
            {
                "a.py": "from pkg.b import B\n",
                "b.py": (
                    "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n"
                    "    from pkg.a import A\n"
                ),
            },
            ["pkg.a", "pkg.b", "pkg.a"],
        )

    def test_insideFunction(self) -> None:
        """
        An import inside a function counts.
        """
        self.assertCycle(
            {
                "a.py": "from pkg.b import B\n",
                "b.py": "def f():\n    from pkg.a import A\n",
            },
            ["pkg.a", "pkg.b", "pkg.a"],
        )

    def test_relative(self) -> None:
        """
        Relative imports are resolved from the module's package, or from a
        package's own C{__init__}.
        """
        self.assertCycle(
            {
                "sub/__init__.py": "from .c import C\n",
                "sub/c.py": "from ..a import A\n",
                "a.py": "from . import sub\n",
            },
            ["pkg.a", "pkg.sub", "pkg.sub.c", "pkg.a"],
        )

    def test_fromPackageImportModule(self) -> None:
        """
        C{from package import module} imports the module.
        """
        self.assertCycle(
            {
                "sub/__init__.py": "",
                "sub/c.py": "from pkg import a\n",
                "a.py": "from pkg.sub import c\n",
            },
            ["pkg.a", "pkg.sub.c", "pkg.a"],
        )

    def test_longCycleNamed(self) -> None:
        """
        A cycle through three modules is named in import order; modules
        outside it are not.
        """
        self.assertCycle(
            {
                "a.py": "import pkg.b\nimport pkg.d\n",
                "b.py": "import pkg.c\n",
                "c.py": "import pkg.a\n",
                "d.py": "import os\n",
            },
            ["pkg.a", "pkg.b", "pkg.c", "pkg.a"],
        )

    def test_noCycle(self) -> None:
        """
        Imports that go one way only make no cycle; neither does a module
        naming itself.
        """
        self.assertEqual(
            findCycles(
                importGraph(
                    self.package(
                        {"a.py": "import pkg.b\nimport pkg.a\n", "b.py": "import os\n"}
                    )
                )
            ),
            [],
        )
