"""Port forwarding over the SSH connection: a port on this machine that reaches one on the device, as
`ssh -L` does."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator

import paramiko

from haqa import ui
from haqa.runner.ssh.connection import CHUNK, Connection
from haqa.runner.ssh.reconnect import TRANSIENT


def _pump(sock: socket.socket, chan, stop: threading.Event) -> None:
    """Copy bytes both ways between a local socket and its channel until either side hangs up."""
    while not stop.is_set():
        ready, _, _ = select.select([sock, chan], [], [], 0.2)
        if sock in ready:
            data = sock.recv(CHUNK)
            if not data:
                return
            chan.sendall(data)
        if chan in ready:
            data = chan.recv(CHUNK)
            if not data:
                return
            sock.sendall(data)


@contextlib.contextmanager
def forward(conn: Connection, remote_port: int, remote_host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    """A local port on 127.0.0.1 whose connections go through this SSH connection (a direct-tcpip
    channel each) to remote_host:remote_port as the device sees it. A connection the device refuses is
    closed at once."""
    conn.ensure()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop, prohibited = threading.Event(), threading.Event()
    pumps: list[threading.Thread] = []

    def serve(sock: socket.socket) -> None:
        chan = None
        try:
            if (transport := conn.transport()) is None:
                return  # the next command reconnects; this connection is simply refused
            chan = transport.open_channel("direct-tcpip", (remote_host, remote_port), sock.getpeername(),
                                          timeout=conn.connect.connect_timeout_s)
            _pump(sock, chan, stop)
        except paramiko.ChannelException as e:
            if e.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED and not prohibited.is_set():
                prohibited.set()
                ui.note(f"{conn.label}: sshd refuses port forwarding (AllowTcpForwarding); "
                        f"{remote_host}:{remote_port} on the device cannot be reached from here")
        except (*TRANSIENT, OSError):
            pass  # refused by the device, or either side hung up
        finally:
            if chan is not None:
                chan.close()
            sock.close()

    def accept() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([listener], [], [], 0.2)
            if ready:
                sock, _ = listener.accept()
                t = threading.Thread(target=serve, args=(sock,), daemon=True)
                t.start()
                pumps.append(t)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield "127.0.0.1", listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(timeout=5)
        listener.close()
        for t in pumps:
            t.join(timeout=5)
