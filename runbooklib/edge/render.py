"""The edge nodes' NGINX configuration, rendered from the parameters, in Debian's layout.

Two files, both loaded by Debian's own ``/etc/nginx/nginx.conf``:

- ``/etc/nginx/conf.d/runbooklib-edge.conf`` (included inside ``http {}``): the CDN on its own host
  name, served from the Gluster mount with cache headers, and port 80 proxied to the ingress on the
  workers with ``X-Forwarded-For``/``X-Real-IP``;
- ``/etc/nginx/modules-enabled/90-runbooklib-edge-stream.conf`` (Debian's ``nginx.conf`` includes
  ``modules-enabled/*.conf`` at the top level, where a ``stream {}`` block must be, and after
  ``50-mod-stream.conf``, which loads the stream module that ``libnginx-mod-stream`` installs): port
  443 passed through by SNI (``ssl_preread``) to the ingress's TLS port, optionally with PROXY
  protocol so the ingress sees the client's address.

Under passthrough the edge reads only the host name in the TLS ClientHello (SNI): it never sees a
path, a header or a cookie. That is why the CDN, which the edge serves itself, needs a host name of
its own: ``https://app.example.ru/cdn/...`` would reach the ingress, not the edge's files. With
``edge.cdn_tls`` the stream map sends the CDN's name (only it) to the edge's own TLS server on its
loopback, which serves the same files; the PROXY header, when on, is read there too.

Debian's default site (``sites-enabled/default``) also claims ``listen 80 default_server``; the edge's
port-80 server must be the default (any application host name goes to the ingress), so the site is
disabled (its file in ``sites-available`` stays).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .settings import cdn_root, ingress_hosts

HTTP_FILE = "/etc/nginx/conf.d/runbooklib-edge.conf"
STREAM_FILE = "/etc/nginx/modules-enabled/90-runbooklib-edge-stream.conf"
DEFAULT_SITE = "/etc/nginx/sites-enabled/default"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
STREAM_LOADER = "/etc/nginx/modules-enabled/50-mod-stream.conf"
PACKAGES = ("nginx", "libnginx-mod-stream")
# the running configuration's id, answered on the node's loopback only (the post-reload check reads it)
HEALTH_PATH = "/.runbooklib-edge"
_ID = "@@CONFIG_ID@@"


@dataclass(frozen=True)
class EdgeConfig:
    """The files of one edge node, and the id that names this configuration."""

    files: dict[str, str]  # path -> content
    config_id: str


def _upstream(name: str, servers: list[str], p) -> str:
    e = p.edge
    lines = [f"    server {s} max_fails={e.max_fails} fail_timeout={e.fail_timeout_seconds}s;" for s in servers]
    return f"upstream {name} {{\n" + "\n".join(lines) + "\n}\n"


def _header(p, what: str) -> str:
    return (f"# Written by runbooklib (edge phase, runbook 09-edge-load-balancing) for {p.environment.name}: {what}.\n"
            "# Edit the parameter file and re-run 09, not this file: it is replaced, checked with `nginx -t` before any\n"
            "# reload, and the previous version is kept in /etc/nginx/runbooklib-previous/.\n"
            f"# configuration {_ID}\n")


def render_http(p) -> str:
    """The ``http {}`` part: the CDN server and the port-80 proxy to the ingress."""
    e = p.edge
    workers = ingress_hosts(p)
    root = cdn_root(p).rstrip("/") + "/"
    names = " ".join(e.hostnames) or "_"
    cdn_tls = ""
    if e.cdn_tls is not None:  # TLS for the CDN's name only, reached through the stream map on the edge's loopback
        t = e.cdn_tls
        cdn_tls = (f"    listen 127.0.0.1:{t.port} ssl{' proxy_protocol' if e.proxy_protocol else ''};\n"
                   f"    ssl_certificate {t.certificate};\n    ssl_certificate_key {t.key};\n")
        if e.proxy_protocol:  # the client's address, from the PROXY header the stream part sends
            cdn_tls += "    set_real_ip_from 127.0.0.1;\n    real_ip_header proxy_protocol;\n"
    return (
        _header(p, "the CDN and the HTTP proxy to the ingress")
        + _upstream("runbooklib_ingress_http", [f"{h.address}:{e.ingress.http_port}" for h in workers], p)
        + f"""
# The CDN: its own host name, served by the edge itself from the Gluster mount.
server {{
    listen {e.http_port};
{cdn_tls}    server_name {e.cdn_hostname};
    location {e.cdn_path} {{
        alias {root};
        expires {e.cdn_max_age_seconds}s;  # Expires and Cache-Control: max-age
        add_header Cache-Control "public";
        autoindex off;
    }}
    location / {{
        return 404;
    }}
}}

# Everything else on port 80 goes to the ingress controller on the workers ({names}).
server {{
    listen {e.http_port} default_server;
    server_name {names};
    location = {HEALTH_PATH} {{
        allow 127.0.0.1;
        deny all;
        default_type text/plain;
        return 200 "{_ID}\\n";
    }}
    location / {{
        proxy_pass http://runbooklib_ingress_http;
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_connect_timeout {e.connect_timeout_seconds}s;
        proxy_next_upstream error timeout;
        proxy_http_version 1.1;
    }}
}}
""")


def render_stream(p) -> str:
    """The top-level ``stream {}`` block: TLS passed through by SNI to the ingress's TLS port."""
    e = p.edge
    workers = ingress_hosts(p)
    mapped = "".join(f"        {name} runbooklib_ingress_tls;\n" for name in e.hostnames)
    cdn_upstream = ""
    if e.cdn_tls is not None:  # the CDN's name is the one the edge answers itself
        mapped = f"        {e.cdn_hostname} runbooklib_cdn_tls;\n" + mapped
        cdn_upstream = f"    upstream runbooklib_cdn_tls {{\n        server 127.0.0.1:{e.cdn_tls.port};\n    }}\n"
    proxy_protocol = ("        proxy_protocol on;  # the ingress reads the client's address from the PROXY header\n"
                      if e.proxy_protocol else "        # proxy_protocol off: the ingress sees the edge's address as the client's\n")
    return (
        _header(p, "TLS passthrough by SNI to the ingress")
        + "# Loaded at nginx.conf's top level (modules-enabled/*.conf), after 50-mod-stream.conf loads the stream module.\n"
        + "stream {\n"
        + "".join("    " + line + "\n" if line else "\n"
                  for line in _upstream("runbooklib_ingress_tls", [f"{h.address}:{e.ingress.https_port}" for h in workers], p).splitlines())
        + cdn_upstream
        + f"""
    # The edge sees only the SNI host name: no path, no header. Names not listed go to the ingress too
    # (it answers with its default certificate).
    map $ssl_preread_server_name $runbooklib_tls_upstream {{
        hostnames;
{mapped}        default runbooklib_ingress_tls;
    }}

    server {{
        listen {e.https_port};
        ssl_preread on;
        proxy_pass $runbooklib_tls_upstream;
        proxy_connect_timeout {e.connect_timeout_seconds}s;
        proxy_next_upstream on;
        proxy_next_upstream_tries {max(2, len(workers))};
{proxy_protocol}    }}
}}
""")


def render(p) -> EdgeConfig:
    """Both files of an edge node (the same on every edge node), with the configuration's id filled in."""
    files = {HTTP_FILE: render_http(p), STREAM_FILE: render_stream(p)}
    digest = hashlib.sha256("".join(f"{k}\n{v}" for k, v in sorted(files.items())).encode()).hexdigest()[:12]
    return EdgeConfig({k: v.replace(_ID, digest) for k, v in files.items()}, digest)


def standalone(p, workdir: str) -> str:
    """A standalone ``nginx.conf`` that includes the rendered files as Debian's does, for ``nginx -t -c`` in tests.

    Its pid, logs and temp paths are under ``workdir``; the rendered files are expected there as
    ``http.conf`` and ``stream.conf``.
    """
    return f"""load_module {STREAM_MODULE};
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 64; }}
include {workdir}/stream.conf;
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    include /etc/nginx/mime.types;
    include {workdir}/http.conf;
}}
"""
