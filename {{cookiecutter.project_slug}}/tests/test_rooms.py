"""The package's rooms import only downwards, in the order docs/architecture.md draws them, and the
SageMaker SDK only in the two modules that exist for it: read from the source, no import needed."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import PACKAGE, PROJECT_ROOT

SOURCE = PROJECT_ROOT / "src" / PACKAGE
# Bottom first: a module may import its own room and those before it, never one after it.
ROOMS = ("config", "leaves", "aws", "workflow", "local", "report", "checks", "cli")
LEAVES = ("extras", "experiments")  # the package's top-level modules (its __init__ too)
SDK_MODULES = {"aws.sagemaker_api", "aws.sagemaker_api_v3"}
SDK_PACKAGES = ("sagemaker", "sagemaker_core")
MAX_LINES = 600
# The one module over MAX_LINES, and why one job needs it: a dataclass per table of config.toml.
LONG_MODULES = {"config.schema"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    head = module.split(".")[0]
    if head == "__main__":  # `python -m <package>`: the command line
        return "cli"
    return "leaves" if head in LEAVES or not module else head


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every import of `path` (top level or inside a function): absolute module names, with their lines.
    Names under the package lose its prefix; `from . import x` names the module x where x is one."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module or "", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                candidate = f"{target}.{alias.name}" if target else alias.name
                is_module = (SOURCE / Path(*candidate.split("."))).is_dir() or (
                    SOURCE / Path(*candidate.split(".")).with_suffix(".py")
                ).is_file()
                found.append((f"{PACKAGE}.{candidate if is_module else target}".rstrip("."), node.lineno))
    return found


def test_every_room_imports_only_its_own_and_the_rooms_below():
    modules = sorted(SOURCE.rglob("*.py"))
    assert {room_of(module_name(path)) for path in modules} == set(ROOMS), "a room the order does not name"
    upward = []
    for path in modules:
        own_room = room_of(module_name(path))
        for name, line in imports_of(path):
            if name.split(".")[0] != PACKAGE:
                continue
            imported_room = room_of(name[len(PACKAGE) + 1 :])
            if ROOMS.index(imported_room) > ROOMS.index(own_room):
                upward.append(
                    f"{path.relative_to(SOURCE)}:{line} imports {name} ({own_room} -> {imported_room})"
                )
    assert not upward, "\n".join(upward)


def test_only_the_sdk_modules_import_the_sagemaker_sdk():
    importers = {
        module_name(path)
        for path in SOURCE.rglob("*.py")
        for name, _ in imports_of(path)
        if name.split(".")[0] in SDK_PACKAGES
    }
    assert importers == SDK_MODULES


def test_each_module_says_its_job_in_its_first_line_and_stays_short():
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstring = ast.get_docstring(tree, clean=False) or ""
        first = docstring.splitlines()[0] if docstring else ""
        assert first.endswith((".", ":", "?")) and len(first) > 20, f"{path.name}: {first!r}"
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if module_name(path) not in LONG_MODULES:
            assert lines <= MAX_LINES, f"{path.relative_to(SOURCE)} is {lines} lines"
