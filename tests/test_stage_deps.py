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
    module = copy_of_src / "src" / "l2lab" / "download.py"
    text = module.read_text()
    # A function-level import, the easiest to miss by eye.
    module.write_text(text.replace("def fetch(", "def _probe() -> None:\n    from l2lab.report import markdown\n\n\ndef fetch(", 1))
    problems = stage_problems(copy_of_src)
    missing, extra = problems["download"]
    assert "src/l2lab/report.py" in missing and not extra
    # report.py pulls in tracking, plots, ...: the preprocess stage does not import download, so it stays clean.
    assert "preprocess" not in problems


def test_a_dep_whose_import_was_removed_is_caught(copy_of_src: Path) -> None:
    module = copy_of_src / "src" / "l2lab" / "preprocess.py"
    module.write_text(module.read_text().replace("from l2lab.synthetic import SYNTHETIC_MARK\n", "SYNTHETIC_MARK = 'x'\n"))
    missing, extra = stage_problems(copy_of_src)["preprocess"]
    assert extra == {"src/l2lab/synthetic.py"} and not missing


def test_code_digest_follows_the_closure(copy_of_src: Path) -> None:
    src = copy_of_src / "src"
    before = {stage: code_digest(f"l2lab.stages.{stage}", src) for stage in ("train", "evaluate")}
    (src / "l2lab" / "fit.py").write_text((src / "l2lab" / "fit.py").read_text() + "\n# an edit\n")
    assert code_digest("l2lab.stages.train", src) != before["train"]  # train imports fit
    assert code_digest("l2lab.stages.evaluate", src) == before["evaluate"]  # evaluate does not

