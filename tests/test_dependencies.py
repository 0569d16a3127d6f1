"""Dependencies are honest: what the processes import at run time is declared for run time,
and the LangChain adapter is loaded only when chosen."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from functools import cache
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_PACKAGES = ("core", "gateway", "worker", "offline_model")
FIRST_PARTY = {*RUNTIME_PACKAGES, "examples"}


def normalised(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(group: str | None = None) -> set[str]:
    """The distributions pyproject.toml declares for run time (or in one extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["optional-dependencies"][group] if group else project["dependencies"]
    names = (re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r) for r in requirements)
    return {normalised(name.group()) for name in names if name}


def imported_modules(tree: ast.Module) -> Iterator[str]:
    """Every module an `import` names, the names `from` imports included (they may be
    submodules), leaving out `if TYPE_CHECKING:` blocks."""
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for statement in node.body
        for inner in ast.walk(statement)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


@cache
def files_of(name: str) -> frozenset[str]:
    return frozenset(str(file) for file in distribution(name).files or ())


@cache
def distributions_by_module() -> Mapping[str, list[str]]:
    return packages_distributions()


def owners(module: str) -> set[str]:
    """The distributions that ship `module`: the one whose files hold its longest dotted
    prefix, for namespace packages such as `opentelemetry` that several ship."""
    parts = module.split(".")
    candidates = distributions_by_module().get(parts[0], [])
    for length in range(len(parts), 1, -1):
        path = "/".join(parts[:length])
        found = {
            name
            for name in candidates
            if any(f.startswith(path + "/") or f == path + ".py" for f in files_of(name))
        }
        if found:
            return {normalised(name) for name in found}
    return {normalised(name) for name in candidates}


def undeclared_imports(runtime: set[str]) -> dict[str, set[str]]:
    """Third-party modules the run-time packages import that no declared distribution ships,
    each with the files that import it."""
    missing: dict[str, set[str]] = {}
    for package in RUNTIME_PACKAGES:
        for source in sorted((ROOT / package).rglob("*.py")):
            for module in imported_modules(ast.parse(source.read_text())):
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in FIRST_PARTY:
                    continue
                if not owners(module) & runtime:
                    missing.setdefault(module, set()).add(str(source.relative_to(ROOT)))
    return missing


def test_every_run_time_import_is_a_declared_run_time_dependency() -> None:
    assert undeclared_imports(declared()) == {}, "add these to [project] dependencies"


def test_an_import_declared_only_for_development_is_caught() -> None:
    """The check above can fail: take `openai` back to the dev extra and it names it."""
    assert "openai" in declared() and "openai" not in declared("dev")
    missing = undeclared_imports(declared() - {"openai"})
    assert "gateway/routes/completions.py" in missing["openai.types.chat.ChatCompletion"]


def fresh_python(program: str) -> list[str]:
    """What `program` prints in a new interpreter, without the caller's GATEWAY_* variables."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_default_gateway_does_not_load_langchain_openai() -> None:
    program = (
        "import sys\n"
        "from core.settings import Settings\n"
        "from gateway.app import create_app\n"
        "create_app(Settings(_env_file=None))\n"
        "print('loaded:', sorted(m for m in sys.modules if m.startswith('langchain_openai')))\n"
    )
    assert "loaded: []" in fresh_python(program)


def test_the_langchain_adapter_loads_it_when_chosen() -> None:
    program = (
        "import sys\n"
        "from core.settings import Settings\n"
        "from gateway.upstream import make_upstream\n"
        "make_upstream(Settings(_env_file=None, upstream_adapter='langchain'))\n"
        "print('loaded:', 'langchain_openai' in sys.modules)\n"
    )
    assert "loaded: True" in fresh_python(program)
