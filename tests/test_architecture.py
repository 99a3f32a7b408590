"""The package's shape: the layers contract holds (and would catch a break), the registries hold the built-ins,
and the command line stays light."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adaptext.core.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "adaptext"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# Every registry in the package, by its kind, with the names it holds once its modules are imported. A new
# registry fails `test_every_registry_lists_its_builtins` until it is added here.
BUILTINS: dict[str, set[str]] = {
    "strategy": {"finetune", "fewshot", "zeroshot", "prompt"},
    "task": {"single_label", "multi_label"},
    "callback": {"progress", "tensorboard"},
    "objective": {"cross_entropy", "adalora", "pet", "contrastive"},
    "model-folder loader": {"routed", "ensemble", "prompt", "nli", "adapter", "onnx", "static", "transformers"},
    "attribution method": {"ig", "occlusion", "shap"},
    "pretraining method": {"mlm", "simcse", "tsdae"},
    "perturbation": {
        "typos",
        "case",
        "punctuation",
        "whitespace",
        "contractions",
        "names",
        "numbers",
        "char_noise",
        "word_swap",
        "word_delete",
    },
}


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_its_layers() -> None:
    assert LINT_IMPORTS.is_file(), f"{LINT_IMPORTS}: install the dev extra (import-linter)"
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    assert "adaptext layers KEPT" in result.stdout
    assert "no import cycles between the modules of a layer KEPT" in result.stdout


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A copy of the package under tmp_path/src and of pyproject.toml under tmp_path/project."""
    shutil.copytree(PACKAGE, tmp_path / "src" / "adaptext", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "project").mkdir()
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "project" / "pyproject.toml")
    return tmp_path


def plant(root: Path, module: str, code: str) -> None:
    """Append `code` to `module` of the copied package (a new module when there is none)."""
    path = root / "src" / Path(*module.split(".")).with_suffix(".py")
    before = path.read_text(encoding="utf-8") if path.is_file() else ""
    path.write_text(before + "\n\n" + code, encoding="utf-8")


def test_the_copy_is_what_lint_imports_analyses(planted: Path) -> None:
    # The installed package stays on sys.path (an editable install's .pth): PYTHONPATH must come first, or the
    # two tests below would check the real package and pass for the wrong reason. An unchanged copy is kept ...
    kept = lint_imports(planted / "project", planted / "src")
    assert kept.returncode == 0 and "0 broken" in kept.stdout, kept.stdout + kept.stderr
    # ... and a module that exists only in the copy, importing upward, breaks it, by name.
    plant(planted, "adaptext.core.planted_marker", "import adaptext.cli\n")
    broken = lint_imports(planted / "project", planted / "src")
    assert broken.returncode != 0
    assert "adaptext.core.planted_marker -> adaptext.cli" in broken.stdout, broken.stdout


def test_an_upward_import_inside_a_function_breaks_the_layers(planted: Path) -> None:
    plant(
        planted,
        "adaptext.core.registry",
        "def _planted() -> None:\n    from adaptext.strategies import train  # noqa: F401\n",
    )
    result = lint_imports(planted / "project", planted / "src")
    assert result.returncode != 0
    assert "adaptext layers BROKEN" in result.stdout, result.stdout
    assert "adaptext.core.registry -> adaptext.strategies" in result.stdout, result.stdout


def test_sibling_modules_importing_each_other_break_the_acyclic_contract(planted: Path) -> None:
    # data.examples is imported by data.io; data.examples importing data.io back (in a function) closes a cycle.
    plant(planted, "adaptext.data.examples", "def _planted() -> None:\n    import adaptext.data.io  # noqa: F401\n")
    result = lint_imports(planted / "project", planted / "src")
    assert result.returncode != 0
    assert "no import cycles between the modules of a layer BROKEN" in result.stdout, result.stdout
    assert "No cycles are allowed in adaptext.data." in result.stdout, result.stdout
    pair = re.search(r"- \.(examples|io) -> \.(examples|io) ", result.stdout)
    assert pair is not None and pair.group(1) != pair.group(2), result.stdout
    assert "adaptext layers KEPT" in result.stdout


def registries() -> dict[str, Registry[object]]:
    """Every module-level `Registry` of the package, by kind, after importing the modules that define or fill one."""
    import adaptext.strategies  # noqa: F401  (registers the built-in strategies)

    sources = sorted(PACKAGE.rglob("*.py"))
    assert sources
    found: dict[str, Registry[object]] = {}
    for path in sources:
        if "Registry(" not in path.read_text(encoding="utf-8"):
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        for value in vars(module).values():
            if isinstance(value, Registry):
                assert found.get(value.kind, value) is value, f"two registries of kind {value.kind!r}"
                found[value.kind] = value
    return found


def test_every_registry_lists_its_builtins() -> None:
    found = registries()
    assert set(found) == set(BUILTINS), "a registry was added or removed: update BUILTINS"
    for kind, names in BUILTINS.items():
        assert set(found[kind].names()) >= names, kind


def test_strategies_register_where_they_are_defined() -> None:
    import adaptext.strategies
    from adaptext.training.strategy import STRATEGIES, Strategy

    for name in BUILTINS["strategy"]:
        strategy = STRATEGIES.get(name)
        assert issubclass(strategy, Strategy) and strategy.name == name
        assert strategy.__module__ == f"{adaptext.strategies.__name__}.{name}"


def test_help_of_every_command_does_not_import_torch() -> None:
    # `adaptext --help` (and each command's) must be instant: no torch until a command runs.
    commands = [
        "train",
        "pretrain",
        "extend",
        "continual",
        "tune",
        "evaluate",
        "robustness",
        "route",
        "explain",
        "distill",
        "predict",
        "rank",
        "select",
        "sample",
        "audit",
        "merge",
        "ensemble",
        "export",
        "serve",
        "monitor",
    ]
    code = (
        "import contextlib, io, sys\n"
        "from adaptext.cli import main\n"
        f"for argv in [['--help'], *[[c, '--help'] for c in {commands!r}]]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit as stop:\n"
        "            assert stop.code == 0, argv\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'pandas') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert "torch" not in out.stdout and "transformers" not in out.stdout, out.stdout


def test_every_command_is_a_module_with_add_parser_and_run() -> None:
    from adaptext import cli

    modules = sorted(p.stem for p in (PACKAGE / "cli").glob("*.py") if p.stem not in ("__init__", "options"))
    assert modules == sorted(m.__name__.rsplit(".", 1)[1] for m in cli.COMMANDS)
    for command in cli.COMMANDS:
        assert callable(command.add_parser) and callable(command.run), command.__name__
