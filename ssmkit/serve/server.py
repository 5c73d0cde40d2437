"""Running the API with uvicorn: graceful shutdown (stop taking work, finish what runs within a grace period, cancel
the rest), in the foreground (`ssmkit serve`) or in a background thread on a free loopback port (tests, demo).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time

import uvicorn

from .app import create_app
from .service import Service


class ServeServer(uvicorn.Server):
    """uvicorn.Server that first marks the service draining (new requests get 503, engines take no new work),
    then lets uvicorn close the listening socket and wait up to the grace period for running requests."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 8000, grace_s: float = 10.0,
                 log_level: str = "warning"):
        config = uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level, lifespan="off",
                                timeout_graceful_shutdown=grace_s, access_log=False)
        super().__init__(config)
        self.service = service
        self.grace_s = grace_s

    @contextlib.contextmanager
    def capture_signals(self):
        """SIGINT / SIGTERM start the graceful shutdown (a second SIGINT forces it). Unlike uvicorn's own, the
        signals are not raised again afterwards, so a clean shutdown ends the process with exit code 0."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets=None) -> None:
        self.service.draining = True
        for b in self.service.backends.values():
            engine = getattr(b, "engine", None)
            if engine is not None:
                engine.drain()
        await super().shutdown(sockets)
        for b in self.service.backends.values():
            aclose = getattr(b, "aclose", None)
            if aclose is not None:
                await aclose()


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket (port 0: a free port chosen by the OS, with no race against other processes)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: without it a response written as headers then body waits ~40 ms for the
    # client's delayed ACK on every keep-alive request (Nagle).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class ServerThread:
    """The server in a daemon thread: `with ServerThread(service) as url: ...` serves on http://127.0.0.1:PORT.

    Leaving the block (or stop()) shuts down gracefully within grace_s and stops the engines.
    """

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0, grace_s: float = 5.0):
        self.service = service
        self.sock = bind_socket(host, port)
        self.port = self.sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        self.server = ServeServer(service, host=host, port=self.port, grace_s=grace_s)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="ssmkit-serve", daemon=True)

    def start(self, timeout_s: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout_s: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout_s)
        self.service.close(0.0)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
