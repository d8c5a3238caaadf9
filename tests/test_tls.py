"""TLS end to end: a gateway serving https/wss with certificates this test makes.

A private CA and server certificates are generated here (``cryptography``);
a real gateway serves them, a real node agent, the simulator and the CLI
connect with ``--ca-file`` and are refused, with a reason, without it or
when the certificate is for another host.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clawtrace.cli.main import cli
from clawtrace.gateway.settings import SettingsError, load_settings
from clawtrace.protocol.client import MemoryOutbox, UplinkClient
from clawtrace.protocol.messages import Hello
from clawtrace.protocol.tls import (
    TLSConfigError,
    check_server_files,
    client_ssl_context,
    explain_cert_error,
)
from gateway_process import GatewayProcess, free_port
from node_process import AGENTS, PY, NodeAgentProcess
from waiting import wait_for

T = TypeVar("T")

# --- certificates ----------------------------------------------------------------


class Pki:
    """A CA and the certificates it signs, written as PEM files under ``root``."""

    def __init__(self, root: Path, name: str = "ClawTrace Test CA") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = root / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        name: str,
        *,
        dns: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1",),
        valid: tuple[timedelta, timedelta] = (timedelta(days=-1), timedelta(days=30)),
    ) -> tuple[Path, Path]:
        """A server certificate for ``dns``/``ips``: (cert.pem, key.pem)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        ca_public = self.key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + valid[0])
            .not_valid_after(now + valid[1])
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path = self.root / f"{name}.crt.pem"
        key_path = self.root / f"{name}.key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


# --- a gateway serving TLS ---------------------------------------------------------


class TLSGateway(GatewayProcess):
    """``clawtrace up --tls-cert --tls-key``: https/wss on 127.0.0.1."""

    def __init__(self, data_dir: Path, cert: Path, key: Path, ca_file: Path) -> None:
        super().__init__(data_dir, extra_args=["--tls-cert", str(cert), "--tls-key", str(key)])
        self.ca_file = ca_file
        self.verify = client_ssl_context(str(ca_file))

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        argv = [sys.executable, "-m", "clawtrace", "up", "--data-dir", str(self.data_dir)]
        argv += ["--port", str(self.port), "--log-level", "warning", *self.extra_args]
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.http_url}/readyz", timeout=1.0, verify=self.verify).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not become ready in {timeout}s:\n{self.log()}")

    def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        token = token or self.token("*", "admin")
        return httpx.get(
            f"{self.http_url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            verify=self.verify,
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_gateway(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSGateway]:
    cert, key = pki.issue("gateway")
    gateway = TLSGateway(tmp_path_factory.mktemp("gw") / "gateway", cert, key, pki.ca_file)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def _ticks(gateway: TLSGateway, agent: str) -> list[str]:
    response = gateway.get(f"/api/v1/agents/{agent}/events", kind="log", limit=1000)
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return [e["line"] for e in response.json()["events"] if str(e.get("line", "")).startswith("tick")]


# --- the gateway's own files --------------------------------------------------------


def test_gateway_refuses_to_start_with_a_key_of_another_certificate(pki: Pki, tmp_path: Path) -> None:
    cert, _ = pki.issue("mine")
    _, other_key = pki.issue("other")
    result = CliRunner().invoke(
        cli,
        ["up", "--data-dir", str(tmp_path / "d"), "--port", str(free_port()),
         "--tls-cert", str(cert), "--tls-key", str(other_key)],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"tls_key {other_key} does not match tls_cert {cert}" in result.output
    assert "give the private key the certificate was issued for" in result.output
    assert not (tmp_path / "d").exists()


def test_settings_check_the_certificate_and_key(pki: Pki, tmp_path: Path) -> None:
    cert, key = pki.issue("checked")
    settings = load_settings(tls_cert=str(cert), tls_key=str(key), port=8443)
    assert settings.external_url == "https://127.0.0.1:8443"
    assert load_settings(port=8443).external_url == "http://127.0.0.1:8443"
    # "" (as in the sample clawtrace.toml) is not set.
    assert load_settings(tls_cert="", tls_key="", port=8443).external_url == "http://127.0.0.1:8443"

    with pytest.raises(SettingsError, match="tls_cert is set but tls_key is not: give both"):
        load_settings(tls_cert=str(cert))
    with pytest.raises(SettingsError, match=r"tls_key .*missing.pem does not exist"):
        load_settings(tls_cert=str(cert), tls_key=str(tmp_path / "missing.pem"))
    with pytest.raises(TLSConfigError, match=r"is not a PEM certificate .*swap tls_cert and tls_key"):
        check_server_files(str(key), str(cert))
    expired_cert, expired_key = pki.issue("expired", valid=(timedelta(days=-30), timedelta(days=-1)))
    with pytest.raises(TLSConfigError, match=r"expired on \d{4}-\d\d-\d\d .*Renew the certificate"):
        check_server_files(str(expired_cert), str(expired_key))
    future_cert, future_key = pki.issue("future", valid=(timedelta(days=2), timedelta(days=30)))
    with pytest.raises(TLSConfigError, match=r"is not valid before .*clock"):
        check_server_files(str(future_cert), str(future_key))
    encrypted = tmp_path / "encrypted.pem"
    loaded = serialization.load_pem_private_key(key.read_bytes(), None)
    encrypted.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSConfigError, match="encrypted with a passphrase"):
        check_server_files(str(cert), str(encrypted))
    with pytest.raises(TLSConfigError, match=r"--ca-file .* holds no usable CA certificate"):
        client_ssl_context(str(key))


# --- node agents and client commands ---------------------------------------------


def test_node_agent_with_ca_file_delivers_and_the_cli_reads_it(
    tls_gateway: TLSGateway, tmp_path: Path
) -> None:
    node = NodeAgentProcess(
        tmp_path,
        tls_gateway,
        [PY, str(AGENTS / "ticker.py"), "0.1"],
        agent="tls-ok",
        options=["--ca-file", str(tls_gateway.ca_file)],
    )
    try:
        wait_for(lambda: _ticks(tls_gateway, "tls-ok"), 15, "the first tick over wss")
        admin = tls_gateway.token("*", "admin")
        common = ["--gateway", tls_gateway.http_url, "--token", admin]
        runner = CliRunner()

        listed = runner.invoke(cli, ["top", "--once", *common, "--ca-file", str(tls_gateway.ca_file)])
        assert listed.exit_code == 0, listed.output
        assert "tls-ok" in listed.output

        # The environment variable works as well as the flag.
        history = runner.invoke(
            cli, ["tail", "tls-ok", *common], env={"CLAWTRACE_CA_FILE": str(tls_gateway.ca_file)}
        )
        assert history.exit_code == 0, history.output
        assert "tick 1" in history.output

        refused = runner.invoke(cli, ["tail", "tls-ok", *common], env={"CLAWTRACE_CA_FILE": ""})
        assert refused.exit_code == 1
        assert "unknown CA" in refused.output and "--ca-file" in refused.output, refused.output
        top_refused = runner.invoke(cli, ["top", "--once", *common], env={"CLAWTRACE_CA_FILE": ""})
        assert top_refused.exit_code == 1
        assert "unknown CA" in top_refused.output and "clawtrace up` running" not in top_refused.output
        live_refused = runner.invoke(cli, ["tail", "tls-ok", "-f", *common], env={"CLAWTRACE_CA_FILE": ""})
        assert live_refused.exit_code == 1
        assert "unknown CA" in live_refused.output, live_refused.output
        plain = runner.invoke(
            cli, ["tail", "tls-ok", "--gateway", f"http://127.0.0.1:{tls_gateway.port}", "--token", admin]
        )
        assert plain.exit_code == 1
        assert "if it serves TLS, use an https:// URL" in plain.output, plain.output

        # The live tail over wss://, as a process: the ticks keep coming.
        follow = subprocess.Popen(
            [PY, "-m", "clawtrace", "tail", "tls-ok", "-f", "-n", "1", *common,
             "--ca-file", str(tls_gateway.ca_file)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            seen = _read_ticks(follow, 3, timeout=15)
        finally:
            follow.terminate()
            follow.wait(10)
        assert len(seen) >= 3
    finally:
        node.close()
    assert "refused" not in node.stderr()


def _read_ticks(proc: subprocess.Popen[str], count: int, timeout: float) -> list[str]:
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if sum("tick" in seen for seen in lines) >= count:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(timeout)
    ticks = [line for line in lines if "tick" in line]
    assert len(ticks) >= count, "".join(lines)
    return ticks


def test_node_agent_without_the_ca_refuses_the_gateway_and_says_why(
    tls_gateway: TLSGateway, tmp_path: Path
) -> None:
    node = NodeAgentProcess(
        tmp_path,
        tls_gateway,
        [PY, str(AGENTS / "ticker.py"), "0.05"],
        agent="tls-unknown-ca",
        options=["--drain-timeout", "0"],
    )
    try:
        stderr = wait_for(lambda: "unknown CA" in node.stderr() and node.stderr(), 15, "the refusal")
        # The agent process itself keeps running (its output waits in the spool).
        assert node.proc.poll() is None
    finally:
        node.close()
    assert "TLS: the certificate of the gateway at 127.0.0.1 was refused: unknown CA" in stderr
    assert "--ca-file PATH (or CLAWTRACE_CA_FILE)" in stderr
    assert _ticks(tls_gateway, "tls-unknown-ca") == []


@contextlib.contextmanager
def tls_listener(cert: Path, key: Path) -> Iterator[int]:
    """A bare TLS server on 127.0.0.1 that only shakes hands; yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                context.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_a_certificate_for_another_host_is_refused(pki: Pki, tmp_path: Path) -> None:
    cert, key = pki.issue("elsewhere", dns=("gateway.example.com",), ips=())
    with tls_listener(cert, key) as port:
        node = NodeAgentProcess(
            tmp_path,
            None,
            [PY, str(AGENTS / "ticker.py"), "0.05"],
            agent="tls-other-host",
            token="not-sent",
            options=["--gateway", f"wss://127.0.0.1:{port}", "--ca-file", str(pki.ca_file),
                     "--drain-timeout", "0"],
        )  # fmt: skip
        try:
            stderr = wait_for(lambda: "hostname mismatch" in node.stderr() and node.stderr(), 15, "refusal")
        finally:
            node.close()
        result = CliRunner().invoke(
            cli,
            ["env", "list", "--gateway", f"https://127.0.0.1:{port}", "--token", "not-sent",
             "--ca-file", str(pki.ca_file)],
        )  # fmt: skip
    assert "refused: hostname mismatch" in stderr and "it is not issued for '127.0.0.1'" in stderr
    assert result.exit_code == 1
    assert "hostname mismatch" in result.output and "subjectAltName" in result.output, result.output


def test_simulator_with_ca_file(tls_gateway: TLSGateway) -> None:
    result = CliRunner().invoke(
        cli,
        ["simulate", "-n", "3", "--rate", "20", "--duration", "1", "--json", "--quiet",
         "--gateway", tls_gateway.ws_url, "--token", tls_gateway.token("dev", "agent"),
         "--ca-file", str(tls_gateway.ca_file), "--id-prefix", "tls-", "--drain-timeout", "5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["ever_connected"] == 3
    assert stats["events_acked"] == stats["events_generated"] > 0


async def _uplink_error(url: str, token: str) -> tuple[str | None, int]:
    client = UplinkClient(url, Hello(agent="tls-direct", env="dev"), MemoryOutbox(), token=token)
    client.reconnect_min = client.reconnect_max = 0.05
    task = asyncio.create_task(client.run())
    try:
        for _ in range(250):
            if client.last_error:
                break
            await asyncio.sleep(0.02)
    finally:
        await client.close()
        await task
    return client.last_error, client.connects


async def test_uplink_says_what_failed(tls_gateway: TLSGateway) -> None:
    """The protocol client keeps its reason in last_error (the simulator shows it) and retries."""
    token = tls_gateway.token("dev", "agent")
    error, connects = await _uplink_error(tls_gateway.ws_url, token)
    assert connects == 0
    assert error is not None and "refused: unknown CA" in error
    error, connects = await _uplink_error(f"ws://127.0.0.1:{tls_gateway.port}", token)
    assert connects == 0
    assert error is not None and "if the gateway serves TLS, use a wss:// URL" in error


def test_an_expired_certificate_is_explained(pki: Pki) -> None:
    """What a client says about an expired certificate (a gateway would not start with one)."""
    cert, key = pki.issue("stale", valid=(timedelta(days=-30), timedelta(days=-1)))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = client_ssl_context(str(pki.ca_file))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    # Shuttle the records between the two in-memory ends until the client gives up.
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        for _ in range(10):
            for side, out, peer_in in ((client_side, c_out, s_in), (server_side, s_out, c_in)):
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
                peer_in.write(out.read())
    message = explain_cert_error(caught.value, "wss://127.0.0.1:7420/v1/agent")
    assert "was refused: expired" in message and "Renew the gateway's certificate" in message
