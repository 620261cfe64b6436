"""The product (gateway/, backend/) reads and sets no private attribute of its libraries, aiohttp
above all: their underscore names change in any release, and a major-version bound only guards
the public API.

Static, over the source, because a private read is a fact of the text. Three rules:
- ``x._name`` where ``x`` is not ``self``/``cls``: the name is one this module defines (its own
  classes working together, as in ``upstream.py``) and, in a module that uses aiohttp, not a
  name aiohttp defines; or a documented public name that happens to start with ``_``.
- ``self._name`` / ``cls._name``: a name the product defines, and never one a library base of
  the class defines (so a subclass of ``web.Server`` cannot reach ``self._kwargs``).
- nothing imported from aiohttp is named with a leading underscore.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from functools import cache
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("gateway", "backend")

# Public by their library's documentation, despite the underscore.
DOCUMENTED_UNDERSCORE_NAMES = {
    "_replace": "namedtuple's copy-with (aiohttp's RawRequestMessage is a NamedTuple)",
    "_asdict": "namedtuple's dict view",
    "_fields": "namedtuple's field names",
    "_make": "namedtuple's constructor from an iterable",
    "_exit": "os._exit: leave now, without cleanup (a rank stuck in a collective)",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _product_files() -> list[Path]:
    return sorted(path for package in PRODUCT for path in (ROOT / package).rglob("*.py"))


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


@cache
def _defined_names(tree: ast.AST) -> frozenset[str]:
    """Every name a module defines: functions, classes, assigned names and attributes, slots."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            names |= {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant)}
    return frozenset(names)


@cache
def _product_names() -> frozenset[str]:
    return frozenset(name for path in _product_files() for name in _defined_names(_parse(path)))


@cache
def _library_names(cls: type) -> frozenset[str]:
    """The private names the non-product classes in ``cls``'s MRO define or set on ``self``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or klass.__module__.split(".")[0] in PRODUCT:
            continue
        names |= {name for name in vars(klass) if _private(name)}
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # built in: no source, its vars() said it all
            continue
        names |= {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and _private(node.attr)
        }
    return frozenset(names)


@cache
def _aiohttp_names() -> frozenset[str]:
    """Every private name aiohttp's own source defines or sets."""
    package = Path(aiohttp.__file__).parent
    return frozenset(
        name
        for path in package.rglob("*.py")
        for name in _defined_names(_parse(path))
        if _private(name)
    )


def _imports(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted path it was imported as (``web`` -> ``aiohttp.web``)."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                bound[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def _resolve(dotted: str) -> object:
    """Import what ``dotted`` names: a module, or an attribute of one."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:]:
            found = getattr(found, part)
        return found
    raise ImportError(dotted)


def _library_bases(node: ast.ClassDef, imports: dict[str, str]) -> list[type]:
    """The classes ``node`` derives from that come from outside the product."""
    bases = []
    for base in node.bases:
        expr = base.value if isinstance(base, ast.Subscript) else base  # Generic[T]
        dotted = ast.unparse(expr)
        root = dotted.split(".")[0]
        if root not in imports or imports[root].split(".")[0] in PRODUCT:
            continue  # the module's own class, or the product's
        resolved = _resolve(imports[root] + dotted[len(root) :])
        if isinstance(resolved, type):
            bases.append(resolved)
    return bases


def _self_or_cls(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")


def _private_imports(node: ast.ImportFrom) -> list[str]:
    if (node.module or "").split(".")[0] != "aiohttp":
        return []
    private_module = any(_private(part) for part in (node.module or "").split("."))
    return [
        f"from {node.module} import {alias.name}"
        for alias in node.names
        if private_module or _private(alias.name)
    ]


def _class_reads(path: Path, node: ast.ClassDef, imports: dict[str, str]) -> list[str]:
    """``self._x`` a class uses (or ``_x`` methods it defines) that its library bases own."""
    own_reads = [
        inner
        for inner in ast.walk(node)
        if isinstance(inner, ast.Attribute) and _self_or_cls(inner) and _private(inner.attr)
    ]
    methods = [
        item
        for item in node.body
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _private(item.name)
    ]
    if not own_reads and not methods:
        return []  # nothing private: no need to import its bases
    library = set().union(*(_library_names(base) for base in _library_bases(node, imports)))
    found = [
        f"{path.name}:{item.lineno} overrides {item.name}"
        for item in methods
        if item.name in library
    ]
    found += [
        f"{path.name}:{inner.lineno} {ast.unparse(inner)}"
        for inner in own_reads
        if inner.attr in library or inner.attr not in _product_names()
    ]
    return found


def _private_reads(path: Path) -> list[str]:
    tree = _parse(path)
    imports = _imports(tree)
    own = _defined_names(tree)
    uses_aiohttp = any(target.split(".")[0] == "aiohttp" for target in imports.values())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found += _private_imports(node)
        elif isinstance(node, ast.ClassDef):
            found += _class_reads(path, node, imports)
        elif isinstance(node, ast.Attribute) and _private(node.attr) and not _self_or_cls(node):
            if node.attr in DOCUMENTED_UNDERSCORE_NAMES:
                continue
            if node.attr not in own or (uses_aiohttp and node.attr in _aiohttp_names()):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("package", PRODUCT)
def test_the_product_reads_no_private_attribute_of_a_library(package: str) -> None:
    reads = {
        str(path.relative_to(ROOT)): found
        for path in sorted((ROOT / package).rglob("*.py"))
        if (found := _private_reads(path))
    }
    assert reads == {}


# The rules must catch what they are for; each snippet is a read the listener once made.
CAUGHT = {
    "a runner's site": (
        "from aiohttp import web\ndef port(site: web.TCPSite):\n    return site._server\n",
        "site._server",
    ),
    "a subclass's base state": (
        "from aiohttp import web\n"
        "class S(web.Server):\n"
        "    def __call__(self):\n"
        "        return web.RequestHandler(self, loop=self._loop, **self._kwargs)\n",
        "self._kwargs",
    ),
    "a private hook": (
        "from aiohttp import web\n"
        "class R(web.AppRunner):\n"
        "    async def _make_server(self):\n"
        "        return await super()._make_server()\n",
        "overrides _make_server",
    ),
    "a private import": (
        "from aiohttp.web_protocol import _RequestFactory\n",
        "import _RequestFactory",
    ),
}


@pytest.mark.parametrize("name", sorted(CAUGHT))
def test_the_rules_catch_the_reads_the_listener_once_made(name: str, tmp_path: Path) -> None:
    source, expected = CAUGHT[name]
    path = tmp_path / "sample.py"
    path.write_text(source)
    assert any(expected in found for found in _private_reads(path)), _private_reads(path)
