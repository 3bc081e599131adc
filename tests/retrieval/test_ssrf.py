"""SSRF policy: address classes, DNS answers, allowlists and IP pinning in the transport.

Nothing here sends traffic anywhere but 127.0.0.1: DNS is stubbed where names matter,
and the pinning test uses httpx.MockTransport as the inner transport.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from retrieval.ssrf import SSRFBlocked, SSRFPolicy, SSRFTransport
from tests.support.loopback_web import LoopbackWeb, serve_loopback_web


@pytest.fixture(scope="module")
def web() -> Iterator[LoopbackWeb]:
    with serve_loopback_web() as server:
        yield server


def stub_resolver(answers: dict[str, list[list[str]]], calls: list[str] | None = None):
    """Each lookup of a name pops its next answer (to simulate DNS rebinding)."""
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        queue = answers[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]
    return resolve


@pytest.mark.parametrize(("address", "words"), [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
    ("fc00::1", "private"), ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"),
    ("100.100.100.200", "metadata"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("240.0.0.1", "reserved"),
    ("100.64.0.1", "carrier-grade NAT"), ("192.0.2.1", "private"),
    ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "metadata"),
    ("64:ff9b::a00:1", "private"), ("2002:a00:1::", "private"),
])
def test_internal_addresses_are_refused(address: str, words: str) -> None:
    reason = SSRFPolicy().blocked_reason(ipaddress.ip_address(address))
    assert reason is not None and words in reason


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert SSRFPolicy().blocked_reason(ipaddress.ip_address(address)) is None


def test_allowlisted_ranges_open_only_themselves() -> None:
    policy = SSRFPolicy(allow_cidrs=["127.0.0.1/32", "10.1.0.0/16", "169.254.0.0/16"])
    assert policy.blocked_reason(ipaddress.ip_address("127.0.0.1")) is None
    assert policy.blocked_reason(ipaddress.ip_address("10.1.2.3")) is None
    assert "loopback" in (policy.blocked_reason(ipaddress.ip_address("127.0.0.2")) or "")
    assert "private" in (policy.blocked_reason(ipaddress.ip_address("10.2.0.1")) or "")
    # Metadata stays closed even inside an opened range: it hands out credentials.
    assert "metadata" in (policy.blocked_reason(ipaddress.ip_address("169.254.169.254")) or "")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x",
                                 "gopher://127.0.0.1:25/", "data:text/html,hi"])
async def test_only_http_and_https(url: str) -> None:
    with pytest.raises(SSRFBlocked, match="only http and https"):
        await SSRFPolicy(allow_cidrs=["0.0.0.0/0"]).check(url)


async def test_names_are_checked_after_resolution() -> None:
    calls: list[str] = []
    policy = SSRFPolicy(resolver=stub_resolver({
        "evil.example": [["10.0.0.5"]],
        "mixed.example": [["10.0.0.5", "93.184.216.34"]],
        "news.example": [["93.184.216.34"]],
    }, calls))
    with pytest.raises(SSRFBlocked) as info:
        await policy.check("https://evil.example/a")
    assert "evil.example resolves to 10.0.0.5" in info.value.reason
    assert "private" in info.value.reason
    target = await policy.check("https://mixed.example/")  # only the public one is used
    assert str(target.ip) == "93.184.216.34" and target.host == "mixed.example"
    target = await policy.check("http://news.example:8080/x")
    assert (target.scheme, target.port) == ("http", 8080)
    with pytest.raises(SSRFBlocked, match="metadata host"):
        await policy.check("http://metadata.google.internal/computeMetadata/v1/")
    assert "metadata.google.internal" not in calls  # refused before any DNS query


async def test_numeric_host_forms_are_resolved_then_refused() -> None:
    for url in ("http://2130706433/", "http://0x7f.1/", "http://[::ffff:127.0.0.1]/",
                "http://127.1/"):
        with pytest.raises(SSRFBlocked, match="loopback"):
            await SSRFPolicy().check(url)


async def test_allowlisted_hosts_and_domains() -> None:
    resolver = stub_resolver({"wiki.corp.example": [["10.9.0.1"]],
                              "corp.example": [["10.9.0.2"]], "other.example": [["10.9.0.3"]],
                              "sneaky.corp.example": [["169.254.169.254"]]})
    policy = SSRFPolicy(allow_hosts=[".corp.example"], resolver=resolver)
    assert str((await policy.check("http://wiki.corp.example/")).ip) == "10.9.0.1"
    assert str((await policy.check("http://corp.example/")).ip) == "10.9.0.2"
    with pytest.raises(SSRFBlocked):
        await policy.check("http://other.example/")
    with pytest.raises(SSRFBlocked, match="metadata"):
        await policy.check("http://sneaky.corp.example/")


async def test_transport_connects_to_the_checked_ip() -> None:
    """DNS rebinding: the first answer is public, the next one internal. The request goes
    to the IP that was checked, with the real name in Host and SNI; the rebound answer
    is refused on the next request before anything is sent."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="ok")

    policy = SSRFPolicy(resolver=stub_resolver({"news.example": [["93.184.216.34"],
                                                                 ["127.0.0.1"]]}))
    async with httpx.AsyncClient(transport=SSRFTransport(policy, httpx.MockTransport(handler)),
                                 trust_env=False) as client:
        response = await client.get("https://news.example/story?id=1")
        assert response.status_code == 200
        assert str(response.url) == "https://news.example/story?id=1"
        with pytest.raises(SSRFBlocked, match="loopback"):
            await client.get("https://news.example/story?id=2")
    assert len(seen) == 1
    sent = seen[0]
    assert sent.url.host == "93.184.216.34" and sent.url.path == "/story"
    assert sent.headers["host"] == "news.example"
    assert sent.extensions["sni_hostname"] == "news.example"


async def test_real_loopback_request_keeps_the_host_header(web: LoopbackWeb) -> None:
    """Through the system resolver: 'localhost' is checked, pinned to 127.0.0.1 (the only
    allowed answer) and the server still sees the name it was asked for."""
    sent: list[httpx.Request] = []

    class Recording(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(request)
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    policy = SSRFPolicy(allow_cidrs=["127.0.0.1/32"])
    async with httpx.AsyncClient(transport=SSRFTransport(policy, Recording()),
                                 trust_env=False) as client:
        response = await client.post(f"http://localhost:{web.port}/searxng/search",
                                     params={"q": "river", "format": "json"})
    assert response.status_code == 200 and response.json()["results"]
    assert sent[0].url.host == "127.0.0.1"
    assert web.requests[-1]["headers"]["host"] == f"localhost:{web.port}"
    with pytest.raises(SSRFBlocked, match="loopback"):
        await SSRFPolicy().check(f"http://localhost:{web.port}/")


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A throwaway certificate for ``name`` (EC key: fast to make)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_https_is_pinned_with_sni_and_certificate_checked(tmp_path: Path) -> None:
    """https to a name resolved to 127.0.0.1: TLS sends the real name as SNI and verifies
    the certificate against it, although the socket goes to the pinned IP."""
    cert, key = _self_signed(tmp_path, "news.example")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni.append(name)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        host = next(line for line in request.split(b"\r\n") if line.lower().startswith(b"host"))
        body = host.split(b":", 1)[1].strip()
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    policy = SSRFPolicy(allow_cidrs=["127.0.0.1/32"], resolver=stub_resolver({
        "news.example": [["127.0.0.1"]], "other.example": [["127.0.0.1"]]}))
    verify = ssl.create_default_context(cafile=str(cert))
    try:
        async with httpx.AsyncClient(transport=SSRFTransport(
                policy, httpx.AsyncHTTPTransport(verify=verify)), trust_env=False) as client:
            response = await client.get(f"https://news.example:{port}/")
            assert response.text == f"news.example:{port}"  # Host header kept
            assert sni == ["news.example"]
            with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                await client.get(f"https://other.example:{port}/")  # wrong name: refused
    finally:
        server.close()
        await server.wait_closed()
