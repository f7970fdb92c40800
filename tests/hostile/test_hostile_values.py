"""Hostile values in names, labels, paths and identifiers: refused at the door, or proven harmless downstream.

Every text field of the committed parameter files is given a break-out payload (quotes, a command
substitution, backticks, a newline, a SQL terminator). Either the loader refuses it (exit 2, the field
named), or the field is one of the few whose text is free by nature: descriptions, file paths and
secret references (used as arguments and quoted: `shlex.quote`, SFTP), passwords (written to files of
mode 600, never to a command line; `test_hostile_secrets` runs the database with passwords that
carry a SQL break-out and checks nothing escaped). A field that starts accepting such text fails here
until its downstream use is proven safe and it is added below.
"""

from __future__ import annotations

import copy
import functools
import os

import pytest
import yaml

from hostile import hostile_corpus as corpus
from runbooklib.errors import ParamsError
from runbooklib.params import parse_params

MARK = "/var/tmp/runbook-hostile-escaped"
PAYLOADS = [
    f"x';touch {MARK};'",
    f'x"; touch {MARK}; "',
    f"x$(touch {MARK})",
    f"x`touch {MARK}`",
    f"x\ntouch {MARK}\n",
    "x'); DROP DATABASE mysql; -- ",
    "x\\' OR 1=1 -- ",
]
if os.environ.get("RUNBOOK_SLOW") != "1":
    PAYLOADS = PAYLOADS[:1] + PAYLOADS[4:6]  # a quote, a newline, a SQL terminator; all of them in a full run
# free text by nature, each proven harmless downstream (see the module's docstring)
FREE_TEXT = {"environment.description", "inventory.hosts[].location.site", "ssh.key", "ssh.known_hosts", "vm.deploy_user.authorized_key",
             "kubernetes.state_dir", "kubernetes.rke", "kubernetes.kubectl", "kubernetes.helm", "kubernetes.etcd_backup.path",
             "registry.json_key", "database.root_password", "database.replication_password", "storage.ceph.install.location",
             "logging.user", "logging.password", "cache.password",
             # descriptions in the residency report: shown only, through html.escape (display tables, the report site)
             "residency.endpoints[].site", "residency.endpoints[].what", "residency.runbook_host.site"}


def generic(path: str) -> str:
    import re

    return re.sub(r"\[\d+\]", "[]", path)


@functools.cache
def _base(name: str) -> dict:
    return corpus.base(name)


def base(name: str) -> dict:
    return copy.deepcopy(_base(name))


def text_fields():
    for name in corpus.BASES:
        data = base(name)
        for loc, value in corpus.nodes(data):
            if isinstance(value, str):
                yield name, loc
        for i, _ in enumerate(data["inventory"]["hosts"][:1]):  # labels: keys and values
            yield name, ("inventory", "hosts", i, "labels")


CASES = [(name, loc, payload) for name, loc in text_fields() for payload in PAYLOADS]


@pytest.mark.hostile("hostile values: refused or free text", "every runbook (the runner's check)")
def test_a_break_out_payload_in_any_text_field_is_refused_unless_the_field_is_free_text(record_property):
    accepted, refused = set(), 0
    for name, loc, payload in CASES:
        data = _base(name)  # with_value copies it
        value = {payload: "v", "k": payload} if loc[-1] == "labels" else payload
        text = yaml.safe_dump(corpus.with_value(data, loc, value), sort_keys=False)
        try:
            parse_params(text, "hostile.yaml")
        except ParamsError as e:
            assert e.exit_code == 2 and any(p.path.startswith(corpus.path_str(loc)) for p in e.problems), (loc, payload, str(e))
            refused += 1
            continue
        accepted.add(generic(corpus.path_str(loc)))
    record_property("cases", len(CASES))
    assert accepted - FREE_TEXT == set(), f"fields that take a break-out payload and are not proven harmless: {sorted(accepted - FREE_TEXT)}"
    assert refused > len(CASES) // 2


@pytest.mark.hostile("hostile values: refused or free text", "02-vm-baseline")
def test_an_ntp_server_cannot_carry_a_second_line_into_chrony_s_configuration():
    """Found by the test above: ``vm.ntp_servers`` took any text, and each entry becomes a line of the
    chrony drop-in; a newline added directives of one's own. Names and addresses only now."""
    data = base("lab")
    for bad in ("10.0.0.1\nmakestep 1000 -1", "pool.ntp.org iburst maxsources 9", "a;b"):
        with pytest.raises(ParamsError) as caught:
            parse_params(yaml.safe_dump(corpus.with_value(data, ("vm", "ntp_servers"), [bad])), "ntp.yaml")
        assert "vm.ntp_servers[0]" in str(caught.value) and "a host name or an IP address" in str(caught.value)
    for good in ("10.0.0.1", "0.ru.pool.ntp.org", "2001:db8::1", "fe80::1"):
        assert parse_params(yaml.safe_dump(corpus.with_value(data, ("vm", "ntp_servers"), [good])), "ntp.yaml").vm.ntp_servers == [good]


@pytest.mark.hostile("hostile values: refused or free text", "03-kubernetes-cluster")
def test_a_node_label_is_kubernetes_label_syntax():
    """Found by the first test: ``inventory.hosts[].labels`` took any text; the labels become RKE2's
    ``node-label: key=value`` (an ``=`` in a key moves the split) and RKE1's node labels."""
    data = base("lab")
    for bad in ({"a=b": "c"}, {"tier": "x y"}, {"tier": "a\nb"}, {"x" * 64: "v"}, {"tier": "'; touch /x"}):
        with pytest.raises(ParamsError) as caught:
            parse_params(yaml.safe_dump(corpus.with_value(data, ("inventory", "hosts", 0, "labels"), bad)), "labels.yaml")
        assert "inventory.hosts[0].labels" in str(caught.value)
    good = {"example.org/tier": "frontend", "zone": "", "app.kubernetes.io/part-of": "shop_v1.2"}
    assert parse_params(yaml.safe_dump(corpus.with_value(data, ("inventory", "hosts", 0, "labels"), good)), "labels.yaml").hosts[0].labels == good
