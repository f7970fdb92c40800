"""Project hygiene: dependencies in step, notebooks committed clean, the README's promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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
    extras = project["optional-dependencies"]
    wanted = dict(_name_spec(r) for r in project["dependencies"] + extras["lab"] + extras["test"]
                  if not r.startswith("runbooklib["))
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


def test_ruff_is_clean():
    ruff = subprocess.run([sys.executable, "-m", "ruff", "check", "--quiet", "."], cwd=ROOT, capture_output=True, text=True)
    assert ruff.returncode == 0, ruff.stdout[-4000:] + ruff.stderr[-2000:]


def test_a_wheel_holds_every_module_and_imports_outside_the_checkout(tmp_path):
    """A non-editable install (a wheel) must carry every subpackage of the library and the lab."""
    import json
    import shutil

    # a copy of the sources: setuptools writes build/ and *.egg-info next to what it builds
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", ".lab", "outputs", "build", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", ".ruff_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir",
                            str(tmp_path / "dist"), str(src)], capture_output=True, text=True, cwd=tmp_path)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("runbooklib-*.whl")
    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True)
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for pkg in ("runbooklib", "runbooklab") for p in (ROOT / pkg).rglob("*.py") if "kbin" not in p.parts)
    # the wheel's copy comes first on sys.path; the dependencies come from the project's environment
    probe = ("import importlib, json, sys\n"
             "print(json.dumps({m: importlib.import_module(m).__file__ for m in json.loads(sys.argv[1])}))")
    done = subprocess.run([sys.executable, "-c", probe, json.dumps(modules)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)})
    assert done.returncode == 0, done.stderr[-3000:]
    files = json.loads(done.stdout)
    assert {m: f for m, f in files.items() if not f.startswith(str(target))} == {}


@pytest.mark.parametrize("path", [p for p in committed_notebooks() if p.startswith("notebooks/")])
def test_generated_blocks_of_the_runbooks_are_current(path):
    """A runbook's rollback table is rendered from its phase's OPERATIONS; `make notebooks` refreshes it."""
    from runbooklib.phase.doc import stale_cells

    assert stale_cells(ROOT / path) == [], f"{path}: run `make notebooks`"


def test_a_stale_rollback_table_is_caught(tmp_path):
    import nbformat

    from runbooklib.phase.doc import stale_cells, sync

    nb = nbformat.read(ROOT / "notebooks" / "02-vm-baseline.ipynb", as_version=4)
    nb.cells[0].source = nb.cells[0].source.replace("| swap disabled |", "| swap removed |")
    nbformat.write(nb, tmp_path / "02.ipynb")
    assert stale_cells(tmp_path / "02.ipynb") == [0]
    assert sync(tmp_path / "02.ipynb") and stale_cells(tmp_path / "02.ipynb") == []


def test_every_runbook_belongs_to_exactly_one_phase():
    """A phase declares its runbooks (incident runbooks as ``incident/<name>``): the suite finds them there."""
    from runbooklib.phases import phases

    declared = [name for p in phases() for name in p.runbooks]
    on_disk = sorted(str(p.relative_to(ROOT / "notebooks").with_suffix("")) for p in (ROOT / "notebooks").rglob("*.ipynb")
                     if ".ipynb_checkpoints" not in p.parts)
    assert sorted(declared) == on_disk and len(declared) == len(set(declared))
