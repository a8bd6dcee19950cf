"""The AWS APIs on 127.0.0.1: moto in server mode."""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass, field

from devstack.postgres import free_port

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # moto otherwise lists ~1,300 public snapshots and AMIs as "self"
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
}


@dataclass
class MotoServer:
    port: int = field(default_factory=free_port)
    _server: object | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**DUMMY_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> MotoServer:
        os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()  # type: ignore[attr-defined]
            self._server = None

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=10).read()

    def configure(self, config: dict[str, object]) -> None:
        req = urllib.request.Request(
            f"{self.endpoint}/moto-api/config",
            method="POST",
            data=json.dumps(config).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).read()
