"""TLS between node agents, the simulator, the CLI and the gateway.

One place builds the client side's ``ssl.SSLContext`` (the system trust
store, plus a private CA given with ``--ca-file`` / ``CLAWTRACE_CA_FILE``),
explains a failed certificate check in words that say what to do, and checks
the gateway's certificate and key before it starts serving.

There is deliberately no way to turn verification off: a node agent sends
its agent credential and everything its agent does (tool arguments, outputs,
thoughts) over this connection, and obeys restart/stop/deploy commands that
come back on it. An unverified connection hands all of that to whoever can
intercept it. A private CA is one file away (``--ca-file``), which is as easy
as a skip switch and keeps the guarantee.
"""

from __future__ import annotations

import _ssl
import functools
import getpass
import logging
import os
import ssl
import time
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlsplit

log = logging.getLogger("clawtrace.tls")

CA_FILE_ENV: Final = "CLAWTRACE_CA_FILE"
TLS_SCHEMES: Final = frozenset({"wss", "https"})
CA_FILE_HINT: Final = f"--ca-file PATH (or {CA_FILE_ENV})"

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) that a gateway certificate usually fails with.
_UNKNOWN_CA: Final = frozenset({2, 18, 19, 20, 21, 27, 28})
_EXPIRED: Final = 10
_NOT_YET_VALID: Final = 9
_REVOKED: Final = 23
_HOSTNAME_MISMATCH: Final = frozenset({62, 64})
# The same problem, explained at most this often per message (a fleet of
# simulated agents, or a node agent retrying every few seconds).
_LOG_EVERY_SECONDS: Final = 60.0
_last_logged: dict[str, float] = {}


class TLSConfigError(ValueError):
    """A TLS file (CA, certificate, key) cannot be used; the message says why and what to do."""


def is_tls_url(url: str) -> bool:
    return url.partition("://")[0].lower() in TLS_SCHEMES


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The context every connection to a gateway uses: certificates are
    verified (chain and host name) against the system trust store, which
    also honours ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, plus ``ca_file``.

    Always a context, also without ``ca_file``: left to themselves, httpx
    would trust certifi's bundle instead of the system's, and websockets
    refuses ``ssl=None`` for a ``wss://`` URL.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file:
        _readable(ca_file, "--ca-file", "the CA certificate (PEM) that signed the gateway's certificate")
        try:
            context.load_verify_locations(cafile=ca_file)
        except ssl.SSLError as exc:
            raise TLSConfigError(
                f"--ca-file {ca_file} holds no usable CA certificate ({exc.reason or exc}): give the PEM "
                "file (-----BEGIN CERTIFICATE-----) of the CA that signed the gateway's certificate"
            ) from None
    return context


def context_for(url: str, ca_file: str | None) -> ssl.SSLContext | None:
    """The client context for ``url``: None for ``ws://`` and ``http://``
    (where a context is refused or would do nothing)."""
    if not is_tls_url(url):
        if ca_file:
            log.warning(
                "--ca-file %s is not used: the gateway URL %s is not wss:// or https://", ca_file, url
            )
        return None
    return client_ssl_context(ca_file)


@functools.cache
def default_client_context() -> ssl.SSLContext:
    """``client_ssl_context(None)``, built once and shared (it loads the trust store)."""
    return client_ssl_context(None)


def find_cert_error(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``exc`` (httpx and httpcore wrap it), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def explain_cert_error(exc: ssl.SSLCertVerificationError, url: str) -> str:
    """What failed about the gateway's certificate, and what to do about it."""
    host = urlsplit(url).hostname or url
    code = exc.verify_code
    detail = exc.verify_message or exc.reason or str(exc)
    head = f"TLS: the certificate of the gateway at {host} was refused"
    if code in _UNKNOWN_CA:
        return (
            f"{head}: unknown CA ({detail}); this machine does not trust the CA that signed it. If the "
            f"gateway uses a private CA, pass that CA's certificate with {CA_FILE_HINT}; otherwise the "
            "gateway's tls_cert should hold its certificate followed by the intermediate certificates"
        )
    if code in _HOSTNAME_MISMATCH:
        return (
            f"{head}: hostname mismatch ({detail}); it is not issued for {host!r}. Connect with a name "
            "the certificate lists (its subjectAltName), or reissue the certificate with this name in it"
        )
    if code == _EXPIRED:
        return (
            f"{head}: expired ({detail}). Renew the gateway's certificate and restart the gateway with "
            "the new files; if it is not expired, check this machine's clock"
        )
    if code == _NOT_YET_VALID:
        return f"{head}: not valid yet ({detail}); check the clocks of this machine and of the CA"
    if code == _REVOKED:
        return f"{head}: revoked ({detail}); the gateway needs a new certificate"
    return f"{head}: {detail}. If the gateway uses a private CA, pass it with {CA_FILE_HINT}"


def log_once(message: str, *, logger: logging.Logger = log) -> None:
    """Log ``message`` as an error, the same text at most once a minute per process."""
    now = time.monotonic()
    last = _last_logged.get(message)
    if last is not None and now - last < _LOG_EVERY_SECONDS:
        return
    if len(_last_logged) > 100:
        _last_logged.clear()
    _last_logged[message] = now
    logger.error("%s", message)


# --- the gateway's own certificate -------------------------------------------


def check_server_files(cert: str | None, key: str | None, *, now: float | None = None) -> None:
    """Refuse a certificate and key the gateway could not serve with, saying
    what is wrong and what to do: only one of the two, a missing or unreadable
    file, not PEM, an encrypted key, a key of another certificate, a
    certificate that expired or is not valid yet."""
    cert, key = cert or None, key or None  # "" in a TOML file: not set
    if cert is None and key is None:
        return
    if cert is None or key is None:
        given, missing = ("tls_cert", "tls_key") if key is None else ("tls_key", "tls_cert")
        raise TLSConfigError(
            f"{given} is set but {missing} is not: give both the certificate and its private key "
            "(--tls-cert CERT.pem --tls-key KEY.pem), or neither to serve plain http/ws"
        )
    cert_text = _readable(cert, "tls_cert", "the server certificate (PEM), followed by any intermediates")
    key_text = _readable(key, "tls_key", "the server certificate's private key (PEM)")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        swapped = "PRIVATE KEY-----" in cert_text
        hint = " (that is a private key: swap tls_cert and tls_key?)" if swapped else ""
        raise TLSConfigError(
            f"tls_cert {cert} is not a PEM certificate{hint}: it must contain -----BEGIN CERTIFICATE-----"
        )
    if "PRIVATE KEY-----" not in key_text:
        swapped = "CERTIFICATE-----" in key_text
        hint = " (that is a certificate: swap tls_cert and tls_key?)" if swapped else ""
        raise TLSConfigError(
            f"tls_key {key} is not a PEM private key{hint}: it must contain -----BEGIN ... PRIVATE KEY-----"
        )
    if "ENCRYPTED" in key_text:
        raise TLSConfigError(
            f"tls_key {key} is encrypted with a passphrase, which the gateway cannot ask for: store it "
            f"decrypted, readable only by the gateway's user (openssl pkey -in {key} -out KEY.pem)"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise TLSConfigError(
                f"tls_key {key} does not match tls_cert {cert} (key values mismatch): give the private key "
                "the certificate was issued for. Compare `openssl x509 -noout -pubkey -in CERT` with "
                "`openssl pkey -pubout -in KEY`"
            ) from None
        raise TLSConfigError(
            f"cannot use tls_cert {cert} with tls_key {key} ({reason}): check that both are PEM files, "
            "the certificate first in tls_cert, then its intermediates"
        ) from None
    _check_validity(cert, time.time() if now is None else now)


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    return b""


def _check_validity(cert: str, now: float) -> None:
    # The stdlib parses certificates only here; without it the server starts
    # and clients refuse an expired certificate with their own message.
    decode = getattr(_ssl, "_test_decode_cert", None)
    if decode is None:
        return
    try:
        info = decode(cert)
        not_before = ssl.cert_time_to_seconds(str(info["notBefore"]))
        not_after = ssl.cert_time_to_seconds(str(info["notAfter"]))
    except (ssl.SSLError, KeyError, ValueError, TypeError):
        return
    if now > not_after:
        raise TLSConfigError(
            f"tls_cert {cert} expired on {_when(not_after)}: clients refuse it. Renew the certificate "
            "(from the same CA), then start the gateway with the new certificate and key"
        )
    if now < not_before:
        raise TLSConfigError(
            f"tls_cert {cert} is not valid before {_when(not_before)}: check this machine's clock, or "
            "wait until then"
        )


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _readable(path: str, what: str, expected: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read(1 << 20)
    except FileNotFoundError:
        raise TLSConfigError(f"{what} {path} does not exist: give the path of {expected}") from None
    except IsADirectoryError:
        raise TLSConfigError(f"{what} {path} is a directory: give the path of {expected}") from None
    except PermissionError:
        raise TLSConfigError(
            f"cannot read {what} {path}: permission denied for user {_user()}; give that user read "
            "access (chown/chmod), keeping private keys unreadable to others"
        ) from None
    except OSError as exc:
        raise TLSConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
