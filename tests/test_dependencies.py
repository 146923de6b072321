"""The shape of the code: utils/ never imports a script, training does not pull in the analysis, the analysis
does not pull in the training methods, no module imports itself back through others, and docs/copying.md
lists exactly the files each script needs (read from the imports, not kept by hand)."""

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPTS = ("train", "evaluate", "analyze_rank")
ANALYSIS = ("utils.analysis", "utils.findings", "utils.report", "utils.plots")


def module_path(name: str) -> Path | None:
    """The file of a module of this project (None for anything else)."""
    base = REPO / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports(name: str, packages: bool = True) -> set[str]:
    """The project modules `name` imports anywhere in its file (top level or inside functions); with
    `packages`, an import of `utils.x.y` counts for the packages above it too (Python runs their __init__)."""
    tree = ast.parse(module_path(name).read_text(encoding="utf-8"))
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets.add(node.module)  # and a name imported from a package may be a module of it
            targets |= {f"{node.module}.{alias.name}" for alias in node.names}
    found = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1 if packages else len(parts), len(parts) + 1):
            candidate = ".".join(parts[:i])
            if module_path(candidate) is not None and candidate != name:
                found.add(candidate)
    return found


def closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += imports(current)
    return seen


def project_modules() -> list[str]:
    names = [p.stem for p in REPO.glob("*.py")]
    for path in sorted([*(REPO / "utils").rglob("*.py"), *(REPO / "benchmarks").glob("*.py")]):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts))
    return names


def test_utils_never_imports_a_script():
    for name in project_modules():
        if name.startswith("utils"):
            scripts = {m for m in imports(name) if not m.startswith("utils")}
            assert not scripts, f"{name} imports {scripts}"


def test_training_does_not_pull_in_the_analysis():
    assert not closure("train") & set(ANALYSIS)


def test_the_analysis_does_not_pull_in_the_training_methods():
    for script in ("analyze_rank", "evaluate"):
        pulled = {m for m in closure(script) if m == "train" or m.startswith("utils.methods")}
        assert not pulled, f"{script} pulls in {pulled}"


def test_no_import_cycles():
    graph = {name: imports(name, packages=False) for name in project_modules()}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph.get(start, ()))

    for name, targets in graph.items():
        for other in targets:
            assert not reaches(other, name), f"{name} and {other} import each other"


def files_of(script: str) -> list[str]:
    return sorted(str(module_path(m).relative_to(REPO)) for m in closure(script))


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_copy_list_in_the_docs_is_the_import_closure(script):
    text = (REPO / "docs" / "copying.md").read_text(encoding="utf-8")
    match = re.search(rf"^### `{script}\.py`\n+```\n(.*?)```", text, flags=re.M | re.S)
    assert match, f"docs/copying.md has no file list for {script}.py"
    listed = sorted(match.group(1).split())
    assert listed == files_of(script), f"docs/copying.md: {script}.py needs exactly {files_of(script)}"
