"""A real SMTP server (aiosmtpd) on a free loopback port: STARTTLS and AUTH required.

It runs as its own process (stopped by PID), with a self-signed certificate made here with
``cryptography``; the client trusts it through :attr:`Smtp.ca_file`. Every message
received is written whole to :attr:`Smtp.maildir` (one ``.eml`` per message, with the
envelope in a ``.json`` beside it), so tests read what a recipient would get.

Run by :func:`start_smtp`; the server side is this module's ``__main__`` (``python -m services.smtp``).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import sys
import time
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from hpcsync.agents.core import daemon

from . import ServiceError, free_port, log_tail

USER, PASSWORD = "alerts", "smtp-test-password"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return cert_file, key_file


@dataclass
class Smtp:
    base: Path
    port: int
    pid: int
    ca_file: Path
    maildir: Path
    user: str = USER
    password: str = PASSWORD

    def messages(self) -> list[tuple[dict, EmailMessage]]:
        """``(envelope, message)`` of every mail received, oldest first."""
        out = []
        for eml in sorted(self.maildir.glob("*.eml")):
            envelope = json.loads(eml.with_suffix(".json").read_text())
            out.append((envelope, message_from_bytes(eml.read_bytes(), policy=policy.default)))
        return out

    def clear(self) -> None:
        for path in self.maildir.iterdir():
            path.unlink()

    def stop(self) -> None:
        daemon.stop(self.pid, timeout=10)


def start_smtp(base: Path) -> Smtp:
    base = Path(base)
    maildir = base / "maildir"
    maildir.mkdir(parents=True, exist_ok=True)
    cert, key = make_certificate(base)
    port = free_port()
    log = base / "smtp.log"
    argv = [sys.executable, "-m", "services.smtp", str(port), str(cert), str(key), str(maildir)]
    proc = daemon.spawn(argv, log_path=log, cwd=Path(__file__).resolve().parents[1])

    def ready() -> bool:
        import smtplib

        if proc.poll() is not None:
            raise ServiceError("exited")
        with smtplib.SMTP("127.0.0.1", port, timeout=2) as s:
            return s.ehlo()[0] == 250

    if not daemon.wait_until(ready, 30, 0.1):
        daemon.stop(proc.pid, timeout=3)
        raise ServiceError(f"the SMTP server did not start on port {port}:\n{log_tail(log)}")
    return Smtp(base, port, proc.pid, cert, maildir)


def _serve(port: int, cert: str, key: str, maildir: str) -> None:
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    counter = iter(range(1_000_000))

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            n = next(counter)
            stem = Path(maildir) / f"{time.time_ns()}-{n:04d}"  # no dot: with_suffix keeps it whole
            stem.with_suffix(".json").write_text(
                json.dumps(
                    {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos, "tls": session.ssl is not None}
                )
            )
            stem.with_suffix(".eml").write_bytes(envelope.original_content or envelope.content)
            return "250 Message accepted for delivery"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == USER.encode()
            and (auth_data.password == PASSWORD.encode())
        )
        return AuthResult(success=ok, handled=False)

    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
