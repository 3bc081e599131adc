"""nginx (Debian's) as a load balancer on 127.0.0.1 in front of app replicas, for tests.

The configuration is the one docs/deploy.md recommends for search-app: round robin,
a failed replica skipped for the next requests, SSE streams passed through unbuffered
with long read timeouts. Skips, with the reason, when nginx is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bench.procs import free_port

__all__ = ["CONFIG", "nginx_balancer"]

CONFIG = """
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream search_app {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://search_app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;          # Server-Sent Events go out as written
            proxy_read_timeout 600s;      # longer than the slowest answer
            proxy_next_upstream error timeout;  # a dead replica: the next one
            proxy_connect_timeout 2s;
        }}
    }}
}}
"""


@contextmanager
def nginx_balancer(backends: list[str]) -> Iterator[str]:
    """Run nginx over ``backends`` (``host:port``); yields its base URL."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx"
                                       if Path("/usr/sbin/nginx").is_file() else None)
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx; scripts/setup.sh does it)")
    root, port = Path(tempfile.mkdtemp(prefix="search-app-nginx-")), free_port()
    servers = "\n".join(f"        server {b} max_fails=1 fail_timeout=10s;" for b in backends)
    (root / "nginx.conf").write_text(CONFIG.format(root=root, port=port, servers=servers))
    process = subprocess.Popen([binary, "-c", str(root / "nginx.conf"), "-p", str(root)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {(root / 'error.log').read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)
