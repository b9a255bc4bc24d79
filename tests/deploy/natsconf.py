"""The deploy/nats configs for tests: passwords, certificates, node configs on free ports."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import uuid
from pathlib import Path

from digits.config import Settings
from digits.natsserver import server_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NATS_DIR = DEPLOY / "nats"
ACCOUNTS = NATS_DIR / "accounts.conf"
USERS = ("admin", "gateway", "ingest", "train", "view", "minio", "integrator", "sys")


def password_env() -> dict[str, str]:
    """A fresh password for every user of accounts.conf, as the NATS_*_PASSWORD variables."""
    return {f"NATS_{user.upper()}_PASSWORD": uuid.uuid4().hex for user in USERS}


def user_settings(env: dict[str, str], user: str, urls: list[str], **kw: object) -> Settings:
    """Settings that connect as ``user`` of accounts.conf to ``urls``."""
    password = env[f"NATS_{user.upper()}_PASSWORD"]
    return Settings(nats_urls=tuple(urls), nats_user=user, nats_password=password, **kw)


def user_env(env: dict[str, str], user: str) -> dict[str, str]:
    """The DIGITS_NATS_USER/PASSWORD variables of a service connecting as ``user``."""
    return {"DIGITS_NATS_USER": user, "DIGITS_NATS_PASSWORD": env[f"NATS_{user.upper()}_PASSWORD"]}


def check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``nats-server -t -c config`` with ``env`` added to the environment."""
    return subprocess.run(
        [server_binary(), "-t", "-c", str(config)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=config.parent,
    )


def node_config(
    folder: Path, name: str, cluster_port: int | None = None, routes: tuple[int, ...] = ()
) -> Path:
    """A test node config in ``folder`` that includes deploy/nats/accounts.conf as it is."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "accounts.conf"
    if not link.exists():
        link.symlink_to(ACCOUNTS)  # the deploy file itself, not a copy
    lines = ['include "accounts.conf"']
    if cluster_port is not None:
        route_urls = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
        lines += [
            "cluster {",
            "  name: digits-test",
            f"  listen: 127.0.0.1:{cluster_port}",
            f"  routes: [{route_urls}]",
            "}",
        ]
    path = folder / f"{name}.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_tls(folder: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> dict[str, str]:
    """A CA and a server certificate for ``hosts``; NATS_TLS_* variables naming the files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "digits test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {
        "NATS_TLS_CA": ("ca.crt", ca.public_bytes(pem)),
        "NATS_TLS_CERT": ("tls.crt", cert.public_bytes(pem)),
        "NATS_TLS_KEY": (
            "tls.key",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
    }
    env = {}
    for var, (name, data) in files.items():
        (folder / name).write_bytes(data)
        env[var] = str(folder / name)
    return env
