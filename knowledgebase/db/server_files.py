"""The files a ``kb server`` directory holds besides PostgreSQL's own: TLS certificates, password
files and the settings sized from the machine.

Layout of a server directory (``kb server init`` makes it; ``kb server replica`` the same shape)::

    server.json          what it is: primary or replica, listen address, allowed networks, upstream
    pgdata/              PostgreSQL's data directory (its settings: pgdata/kb_server.conf)
    run/                 PostgreSQL's Unix socket: the only way in, reached through the TLS front
    upstream/            a replica's tunnel socket to its primary, and its replication password file
    tls/                 ca.crt (hand it to agent machines), ca.key, server.crt, server.key
    secrets/             libpq password files, 0600: owner.pgpass, agent.pgpass, replicator.pgpass
    supervisor.pid/.log  the process that runs PostgreSQL, the front and the tunnel
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from knowledgebase.util.private_files import make_private_dir, write_private_file

MIB = 1 << 20


@dataclass(frozen=True)
class Tuning:
    """PostgreSQL settings for a vector workload, sized from the machine's memory and cores."""

    memory_mb: int
    cores: int

    @property
    def shared_buffers_mb(self) -> int:
        return max(128, min(self.memory_mb // 4, 16384))  # the usual quarter of RAM: HNSW pages stay cached

    @property
    def effective_cache_size_mb(self) -> int:
        return max(256, self.memory_mb * 3 // 4)

    @property
    def maintenance_work_mem_mb(self) -> int:
        # an HNSW build is much faster when the graph fits in maintenance_work_mem (pgvector's README)
        return max(64, min(self.memory_mb // 8, 4096))

    @property
    def work_mem_mb(self) -> int:
        return max(4, min(self.memory_mb // 512, 64))

    def conf_lines(self) -> list[str]:
        return [
            f"# sized for {self.memory_mb} MiB of memory and {self.cores} cores (kb server init --memory-mb)",
            f"shared_buffers = '{self.shared_buffers_mb}MB'",
            f"effective_cache_size = '{self.effective_cache_size_mb}MB'",
            f"maintenance_work_mem = '{self.maintenance_work_mem_mb}MB'",
            f"work_mem = '{self.work_mem_mb}MB'",
            f"max_parallel_maintenance_workers = {max(1, min(self.cores - 1, 7))}",
            f"max_worker_processes = {max(8, self.cores + 4)}",
            "max_connections = 300  # 32 agents x a pool of 4, their warm processes, replicas, admins",
            "random_page_cost = 1.1  # SSD",
        ]


def machine_tuning(memory_mb: int | None = None) -> Tuning:
    """``Tuning`` for this machine (``memory_mb`` overrides the memory it sees)."""
    if memory_mb is None:
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB
    return Tuning(memory_mb=memory_mb, cores=os.cpu_count() or 1)


def new_password() -> str:
    return secrets.token_urlsafe(24)  # URL- and pgpass-safe: letters, digits, - and _


def write_pgpass(path: Path, user: str, password: str, owner: tuple[int, int] | None = None) -> None:
    """A libpq password file for ``user`` on any host, port and database, 0600 (``owner``: chown to it)."""
    write_private_file(path, f"*:*:*:{user}:{password}\n", owner=owner)


def read_pgpass(path: Path) -> tuple[str, str]:
    """The user and password of a password file written by ``write_pgpass``."""
    line = path.read_text().splitlines()[0]
    *_, user, password = line.split(":", 4)
    return user, password


def subject_names(advertise: str) -> list[str]:
    """The names a server certificate is valid for: the advertised host, this machine, loopback."""
    names = [advertise, socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(n for n in names if n))


def write_certificates(tls_dir: Path, names: list[str], *, days: int = 3650) -> None:
    """A private CA (``ca.crt``, ``ca.key``) and a server certificate it signed for ``names``
    (``server.crt``, ``server.key``). Clients verify with ``ca.crt`` (``sslmode=verify-full``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    make_private_dir(tls_dir)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"knowledgebase server CA ({names[0]})")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    private = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    write_private_file(tls_dir / "ca.key", ca_key.private_bytes(pem, private, none))
    write_private_file(tls_dir / "server.key", key.private_bytes(pem, private, none))
    (tls_dir / "ca.crt").write_bytes(ca.public_bytes(pem))
    (tls_dir / "server.crt").write_bytes(cert.public_bytes(pem))
