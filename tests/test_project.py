"""Project hygiene: dependencies in step, notebooks committed clean, the README's promises."""

from __future__ import annotations

import re
import subprocess
import tomllib

import nbformat
import pytest
import yaml

from conftest import ROOT

CONDA_NAMES = {"kubernetes": "python-kubernetes"}  # conda-forge names that differ from PyPI's


def _name_spec(requirement: str) -> tuple[str, str]:
    m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", requirement.strip())
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_environment_yml_lists_the_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_name_spec(r) for r in project["dependencies"] + project["optional-dependencies"]["test"])
    wanted = {CONDA_NAMES.get(n, n): spec for n, spec in wanted.items()}
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip_section = [d for entry in conda if isinstance(entry, dict) for d in entry.get("pip", [])]
    listed = dict(_name_spec(d) for d in conda + pip_section
                  if isinstance(d, str) and not d.startswith("python>") and d not in ("python", "pip"))
    assert listed == wanted


def committed_notebooks() -> list[str]:
    out = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    return out or [str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb")]


@pytest.mark.parametrize("path", committed_notebooks())
def test_committed_notebooks_carry_no_outputs(path):
    nb = nbformat.read(ROOT / path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path}: cell {cell.get('id')} has outputs"
    assert "papermill" not in nb.metadata, f"{path} is an executed copy"


@pytest.mark.parametrize("path", [p for p in committed_notebooks() if p.startswith("notebooks/")])
def test_runbooks_take_the_three_runner_parameters(path):
    nb = nbformat.read(ROOT / path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path} needs exactly one cell tagged 'parameters'"
    names = set(re.findall(r"^(\w+)\s*=", tagged[0].source, re.M))
    assert names == {"params_file", "run_id", "apply"}
    assert any("open_run(" in c.source for c in nb.cells), f"{path} must open its run with runbooklib.open_run"


def test_readme_opens_with_the_two_commands():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:15])
    assert "make demo" in head and "make test" in head
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_outputs_is_empty_in_git():
    tracked = subprocess.run(["git", "ls-files", "outputs"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert tracked in ([], ["outputs/README.md"])
