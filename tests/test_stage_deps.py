"""dvc.yaml lists, for every stage, exactly the l2lab modules its entry point imports (directly or not)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from l2lab.deps import code_digest, import_closure

REPO = Path(__file__).resolve().parents[1]


def stage_problems(repo: Path) -> dict[str, tuple[set[str], set[str]]]:
    """Stage -> (imported but not declared, declared but not imported), for stages whose deps disagree."""
    stages = YAML(typ="safe").load((repo / "dvc.yaml").read_text())["stages"]
    src = repo / "src"
    problems = {}
    for name, stage in stages.items():
        module = re.search(r"python -m (l2lab\.stages\.\w+)", stage["cmd"]).group(1)
        imported = {p.relative_to(repo).as_posix() for p in import_closure(module, src)}
        declared = {d for d in stage["deps"] if d.startswith("src/")}
        if imported != declared:
            problems[name] = (imported - declared, declared - imported)
    return problems


def test_every_stage_declares_exactly_the_modules_it_imports() -> None:
    assert stage_problems(REPO) == {}


@pytest.fixture
def copy_of_src(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "src" / "l2lab", tmp_path / "src" / "l2lab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    return tmp_path


def test_an_import_added_without_its_dep_is_caught(copy_of_src: Path) -> None:
    module = copy_of_src / "src" / "l2lab" / "stages" / "download.py"
    text = module.read_text()
    # A function-level import, the easiest to miss by eye.
    module.write_text(text.replace("def fetch(", "def _probe() -> None:\n    from l2lab.sweeps.report import markdown\n"
                                                 "\n\ndef fetch(", 1))
    problems = stage_problems(copy_of_src)
    missing, extra = problems["download"]
    assert "src/l2lab/sweeps/report.py" in missing and not extra
    # The report pulls in tracking, figures, ...: the preprocess stage does not import download, so it stays clean.
    assert "preprocess" not in problems


def test_a_dep_whose_import_was_removed_is_caught(copy_of_src: Path) -> None:
    module = copy_of_src / "src" / "l2lab" / "stages" / "preprocess.py"
    module.write_text(module.read_text().replace("from l2lab.process import run_stage\n", "run_stage = print\n"))
    missing, extra = stage_problems(copy_of_src)["preprocess"]
    assert extra == {"src/l2lab/process.py"} and not missing


def test_code_digest_follows_the_closure(copy_of_src: Path) -> None:
    src = copy_of_src / "src"
    before = {stage: code_digest(f"l2lab.stages.{stage}", src) for stage in ("train", "evaluate")}
    (src / "l2lab" / "fit.py").write_text((src / "l2lab" / "fit.py").read_text() + "\n# an edit\n")
    assert code_digest("l2lab.stages.train", src) != before["train"]  # train imports fit
    assert code_digest("l2lab.stages.evaluate", src) == before["evaluate"]  # evaluate does not


def test_a_stage_runs_only_its_own_floor_and_those_below() -> None:
    """Sweeps, team mode, the CLI and the demo are above every stage: editing them re-runs none (the
    end-to-end case: test_train_pipeline's report-only edit). The archive reader is preprocess's alone."""
    above = ("src/l2lab/sweeps/", "src/l2lab/team/", "src/l2lab/cli.py", "src/l2lab/demo.py", "src/l2lab/synthetic.py")
    for stage in ("download", "preprocess", "train", "evaluate"):
        files = {p.relative_to(REPO).as_posix() for p in import_closure(f"l2lab.stages.{stage}", REPO / "src")}
        assert not [f for f in files if f.startswith(above)], stage
        assert ("src/l2lab/archive.py" in files) == (stage == "preprocess"), stage


def test_no_module_imports_one_that_imports_it_back() -> None:
    """The layering holds whole: no import circle in src/l2lab, function-level imports included."""
    import ast

    from l2lab.deps import _imported, module_file

    src = REPO / "src"
    modules = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (src / "l2lab").rglob("*.py")}
    graph = {name: {m for m in _imported(ast.parse(path.read_text())) if m in modules and m != name}
             for name, path in modules.items()}
    assert all(module_file(name, src) for name in graph)
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name not in done:
            for child in graph[name]:
                visit(child, (*path, name))
            done.add(name)

    for name in sorted(graph):
        visit(name, ())
