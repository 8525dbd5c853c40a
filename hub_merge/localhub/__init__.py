"""A Hub-compatible local server for tests, the demo and offline use.

``LocalHub`` runs the app under uvicorn in a background thread; the real huggingface_hub client
talks to it through ``HfApi(endpoint=hub.endpoint)`` or ``HF_ENDPOINT`` (uploads through Xet or LFS).

Example:
    >>> with LocalHub("data", tokens={"hf_x": ("alice", "write")}) as hub:  # doctest: +SKIP
    ...     HfApi(endpoint=hub.endpoint, token="hf_x").create_repo("alice/m")
"""

from __future__ import annotations

import os
import socket
import threading
import time

import uvicorn

from .app import HubApp
from .auth import TOKENS_ENV, Identity, load_tokens, parse_token_spec
from .limits import COMMIT_BODY
from .storage import Store

__all__ = ["TOKENS_ENV", "LocalHub", "load_tokens", "parse_token_spec"]


class LocalHub:
    """Start and stop the local Hub in-process; ``port=0`` picks a free port."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: dict[str, tuple[str, str] | Identity] | None = None,
        max_request_bytes: int = COMMIT_BODY,
    ) -> None:
        idents = {
            tok: v if isinstance(v, Identity) else Identity(*v) for tok, v in (tokens or {}).items()
        }
        self.data_dir = data_dir
        self.hub = HubApp(Store(data_dir), idents, max_request_bytes=max_request_bytes)
        self.host, self.port = host, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def fail_next_download(self, path: str, after_bytes: int) -> None:
        """Test hook: the next GET of ``path`` (any repo) drops the connection after N bytes."""
        self.hub.fail_downloads[path] = after_bytes

    def start(self) -> LocalHub:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.hub.app, log_level="critical", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError("local Hub failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=10)
        self._server = None
        self.hub.store.close()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
