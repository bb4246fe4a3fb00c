"""A real S3 API server for tests: moto in server mode on 127.0.0.1, and a switch in front.

    with S3Server(tmp_path) as s3:
        s3.endpoint        # "http://127.0.0.1:PORT" (through the switch)
        s3.down(); s3.up() # the switch refuses connections / forwards again; moto keeps its data
        s3.download(tmp_path / "copy")  # the bucket's objects as files (DuckDB reads them)

moto keeps objects in memory, so "the S3 server is down" is the switch closing its port (new
connections refused, open ones cut) while moto keeps the objects written before.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3

from tests.gateway_process import free_port

BUCKET = "sfpl-export"
KEY_ID, SECRET = "test-key-id", "test-secret"


class Switch:
    """A TCP forwarder on a fixed port that can be turned off and on again."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self.lock:
            if self.listener is not None:
                # shutdown first: a close alone leaves the socket listening while the accept
                # thread is blocked in it
                try:
                    self.listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.listener.close()
                self.listener = None
            for conn in self.conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self.conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class S3Server:
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.switch = Switch(self.port)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.switch.port}"

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.port}",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )

    def __enter__(self) -> S3Server:
        self.log = open(self.workdir / "moto.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.__exit__()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        self.client().create_bucket(Bucket=BUCKET)
        self.switch.up()
        return self

    def __exit__(self, *exc) -> None:
        self.switch.down()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def up(self) -> None:
        self.switch.up()

    def down(self) -> None:
        self.switch.down()

    def keys(self) -> list[str]:
        keys: list[str] = []
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for page in pages:
            keys += [o["Key"] for o in page.get("Contents", [])]
        return sorted(keys)

    def download(self, into: Path) -> Path:
        client = self.client()
        for key in self.keys():
            path = Path(into) / key
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(BUCKET, key, str(path))
        return Path(into)
