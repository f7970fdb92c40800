"""Bad input: every broken parameter file is refused with exit 2, naming the file and the field, before
anything remote happens.

The corpus (``hostile_corpus.py``) is generated from the committed parameter files and the models'
own constraints: every node of every section given a wrong type, every required field removed, an
extra key in every section model, every declared bound crossed, fields that contradict each other
within and across sections, and files that are not YAML, too big, too deep, not UTF-8 or with a key
given twice. hypothesis then mutates the files at random. "Before any connection" is measured, not
assumed: the lab's kernel counts every TCP connection a VM accepts (``TcpPassiveOpens``).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, require_lab, running_lab
from hostile import hostile_corpus as corpus
from runbooklib import cli
from runbooklib.errors import ParamsError, RunbookError
from runbooklib.params import parse_params

RUNBOOKS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
SLOW = os.environ.get("RUNBOOK_SLOW") == "1"


def names_field(error: RunbookError, field: str | None) -> bool:
    if field is None:
        return True
    problems = getattr(error, "problems", [])
    return any(p.path == field or p.path.startswith((field + ".", field + "[")) for p in problems) and field in str(error)


CASES = corpus.all_cases()


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=pytest.mark.hostile(f"bad input: {c.kind}", "every runbook (the runner's check)"))
                                  for c in CASES])
def test_a_broken_parameter_file_is_refused_naming_file_and_field(case, tmp_path):
    path = case.write(tmp_path)
    with pytest.raises(RunbookError) as caught:
        cli_load(path)
    assert caught.value.exit_code == 2
    assert str(path) in str(caught.value)
    assert names_field(caught.value, case.field), f"{case.field} not named in:\n{caught.value}"


def cli_load(path: Path):
    from runbooklib.params import load_params

    return load_params(path)  # what `runbook run` and `runbook check` call first


def test_the_corpus_covers_every_section_and_every_class():
    kinds = {c.kind for c in CASES}
    assert kinds == {"wrong type", "missing", "extra", "out of range", "contradictory", "wrong YAML", "huge", "non-UTF-8", "duplicate keys"}
    sections = {c.field.split(".")[0].split("[")[0] for c in CASES if c.field}
    from runbooklib.params import Params

    assert set(Params.model_fields) <= sections, set(Params.model_fields) - sections


# ---------------------------------------------------------------- property-based generation

LEAVES = {name: [loc for loc, _ in corpus.nodes(corpus.base(name))] for name in corpus.BASES}
hostile_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10 ** 20), max_value=10 ** 20), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.sampled_from(["", " ", "\n", "$(touch /tmp/x)", "'; DROP TABLE t; --", "\x00", "é" * 300, "10.0.0.1/33",
                                          "file:/etc/shadow", "env:", "v1.2", "-1", "0x10", "1e400"]))
hostile_values = st.recursive(hostile_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                         st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(corpus.BASES)))
    data = corpus.base(name)
    changed = []
    for _ in range(draw(st.integers(1, 3))):
        loc = draw(st.sampled_from(LEAVES[name]))
        try:
            if draw(st.booleans()) or not isinstance(loc[-1], str):
                data = corpus.with_value(data, loc, draw(hostile_values))
            else:
                data = corpus.without(data, loc)
        except (KeyError, IndexError, TypeError):  # an earlier mutation removed or replaced the parent
            continue
        changed.append(corpus.path_str(loc))
    return name, data, changed


@pytest.mark.hostile(f"bad input: generated (hypothesis, {2000 if SLOW else 150} examples)", "every runbook (the runner's check)")
@settings(max_examples=2000 if SLOW else 150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_any_mutation_is_either_valid_or_refused_with_exit_2_naming_the_file_never_a_crash(case):
    """Whatever the mutation, the loader answers with a valid model or a ParamsError (exit 2) that names the
    file and a field for every problem: never another exception, never a problem without a place."""
    name, data, changed = case
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    try:
        params = parse_params(text, "mutated.yaml")
    except ParamsError as e:
        assert e.exit_code == 2 and str(e).startswith("mutated.yaml: ")
        assert e.problems and all(p.message for p in e.problems)
        return
    # accepted: the model is whole and its own dump is accepted again
    again = parse_params(yaml.safe_dump(params.model_dump(mode="json", exclude_none=True), sort_keys=False), "again.yaml")
    assert again.environment.name == params.environment.name


# ---------------------------------------------------------------- no connection before the refusal

def passive_opens(lab) -> dict[str, int]:
    """TCP connections each VM's kernel has accepted so far (its own network namespace's counter)."""
    out = {}
    for vm in lab.vms():
        snmp = subprocess.run(["ip", "netns", "exec", lab.netns(vm), "cat", "/proc/net/snmp"], capture_output=True, text=True, check=True).stdout
        tcp = [line.split() for line in snmp.splitlines() if line.startswith("Tcp:")]
        out[vm] = int(tcp[1][tcp[0].index("PassiveOpens")])
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_lab()
    with running_lab(tmp_path_factory.mktemp("badinput"), "rbbad", "10.96.0.0/24") as lab:
        yield lab


@pytest.mark.hostile("bad input: no connection before the refusal", RUNBOOKS)
def test_every_broken_file_exits_2_through_the_command_line_and_no_vm_sees_a_connection(lab, tmp_path, record_property):
    """The lab's own parameter file, broken every way, given to `runbook run` of every runbook (the real
    command line, in-process): exit 2, file and field named, and every VM's kernel counted no new
    connection. The control: one valid `runbook facts` moves every counter."""
    cases = corpus.field_cases("lab-own", lab.params_file) + corpus.file_cases(lab.params_file)
    folder = lab.root  # beside the lab's parameter file, so its relative references would resolve
    before = passive_opens(lab)
    for i, case in enumerate(cases):
        path = case.write(folder)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["--archive", str(tmp_path / "archive"), "run", RUNBOOKS[i % len(RUNBOOKS)], "--params", str(path), "--apply"])
        assert code == 2, (case.id, err.getvalue())
        assert str(path) in err.getvalue() and (case.field is None or case.field in err.getvalue()), (case.id, err.getvalue())
        path.unlink()
    assert passive_opens(lab) == before, "a refused run opened a connection"
    assert not (tmp_path / "archive" / "ledger.jsonl").exists() or (tmp_path / "archive" / "ledger.jsonl").read_text() == ""
    record_property("cases", len(cases))
    # the counter is not blind: a valid command that connects moves every VM's count
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["facts", "--params", str(lab.params_file)]) in (0, 1)
    after = passive_opens(lab)
    assert all(after[vm] > before[vm] for vm in before), (before, after)
