"""Run the app: `hoe serve` (uvicorn in the foreground) or a server on a background thread (tests, benchmarks).

    app, engine = build_app(model, ServeConfig(...))
    serve_forever(app, config)                        # blocks; Ctrl-C stops it
    with BackgroundServer(app) as srv:                # 127.0.0.1, a free port
        openai.OpenAI(base_url=srv.url + "/v1", api_key="none")
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

from hoe.core.errors import ConfigError

from .config import ServeConfig
from .engine import Engine
from .metrics import Metrics
from .protocol import ServedModel

log = logging.getLogger(__name__)


def model_name(model, config: ServeConfig) -> str:
    return config.model_name or Path(model.manifest.folder).name


def build_app(model, config: ServeConfig, extra: dict | None = None):
    """-> (Starlette app, its Engine). The engine's thread runs while the app's lifespan does."""
    from .app import create_app

    engine = Engine(model, config.engine, Metrics())
    return create_app(engine, ServedModel(model, model_name(model, config)), extra), engine


def serve_forever(app, config: ServeConfig) -> None:
    import uvicorn

    log.info("serving on http://%s:%d/v1 (OpenAI API)", config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)


class BackgroundServer:
    """uvicorn on a daemon thread, bound to a free port of 127.0.0.1 before it starts."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="hoe-uvicorn")

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        for _ in range(600):
            if self.server.started:
                return self
            if not self.thread.is_alive():
                break
            threading.Event().wait(0.05)
        raise ConfigError(f"the server on {self.url} did not start within 30 s")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
