"""The edge's nginx configuration for a set of parameter cases, each judged by the real ``nginx -t``.

A standalone nginx.conf (own pid, logs and temp paths, the stream module loaded) includes the two
rendered files as Debian's nginx.conf does: the http part inside ``http {}``, the stream part at the
top level. Cases are data (tests/data/edge/render_cases.yaml).
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, lab_data, set_path
from runbooklib.edge import render
from runbooklib.params import parse_params

CASES = yaml.safe_load((ROOT / "tests" / "data" / "edge" / "render_cases.yaml").read_text())
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CERTS = Path(tempfile.mkdtemp(prefix="edge-render-certs-"))  # one folder: the same parameters render the same id
atexit.register(shutil.rmtree, CERTS, True)
needs_nginx = pytest.mark.skipif(not (Path(NGINX).exists() and Path(render.STREAM_MODULE).exists()),
                                 reason="needs nginx and libnginx-mod-stream (make setup)")


def self_signed(folder: Path) -> tuple[str, str]:
    """A certificate and key for cases that name them (nginx -t loads them)."""
    cert, key = folder / "cdn.crt", folder / "cdn.key"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=cdn.lab.internal",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def params_for(case: dict, folder: Path | None = None):
    data = lab_data()
    for path, value in (case.get("set") or {}).items():
        set_path(data, path, value)
    tls = data["edge"].get("cdn_tls")
    if tls:  # nginx -t loads the certificate: one made here, where the case (or params/lab.yaml) names one
        cert, key = self_signed(folder or CERTS)
        data["edge"]["cdn_tls"] = dict(tls, certificate=cert, key=key)
    return parse_params(yaml.safe_dump(data, sort_keys=False), case["name"])


def nginx_t(p, workdir: Path, extra_http: str = "") -> subprocess.CompletedProcess:
    config = render.render(p)
    (workdir / "http.conf").write_text(config.files[render.HTTP_FILE] + extra_http)
    (workdir / "stream.conf").write_text(config.files[render.STREAM_FILE])
    (workdir / "nginx.conf").write_text(render.standalone(p, str(workdir)))
    return subprocess.run([NGINX, "-t", "-c", str(workdir / "nginx.conf"), "-e", str(workdir / "error.log")],
                          capture_output=True, text=True, timeout=30)


@needs_nginx
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_rendered_configuration_passes_nginx_t(case, tmp_path):
    p = params_for(case, tmp_path)
    done = nginx_t(p, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr
    text = "\n".join(render.render(p).files.values())
    for want in case.get("has", []):
        assert want in text, f"{case['name']}: missing {want!r}"
    for unwanted in case.get("lacks", []):
        assert unwanted not in text, f"{case['name']}: unexpected {unwanted!r}"


@needs_nginx
def test_the_check_refuses_a_broken_configuration(tmp_path):
    done = nginx_t(params_for(CASES[0]), tmp_path, extra_http="bogus_directive on;\n")
    assert done.returncode != 0 and "bogus_directive" in done.stderr


def test_the_configuration_id_names_the_content():
    a, b = render.render(params_for(CASES[0])), render.render(params_for(CASES[1]))
    assert a.config_id != b.config_id and len(a.config_id) == 12
    assert render.render(params_for(CASES[0])).config_id == a.config_id  # the same parameters, the same id
    assert all(f"configuration {a.config_id}" in text for text in a.files.values())
    assert f'return 200 "{a.config_id}\\n";' in a.files[render.HTTP_FILE]


def test_the_stream_file_is_loaded_after_the_stream_module():
    # Debian's nginx.conf includes modules-enabled/*.conf (sorted) at the top level: 50-mod-stream.conf loads the module
    assert Path(render.STREAM_FILE).parent == Path(render.STREAM_LOADER).parent
    assert Path(render.STREAM_FILE).name > Path(render.STREAM_LOADER).name
    debian = Path("/etc/nginx/nginx.conf")
    if debian.exists():
        text = debian.read_text()
        assert "include /etc/nginx/modules-enabled/*.conf;" in text and "include /etc/nginx/conf.d/*.conf;" in text
