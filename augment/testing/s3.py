"""A real S3 endpoint for the tests and benchmarks: moto's server mode (`python -m moto.server`) as its own process, bound to
127.0.0.1 on a free port, reached through s3fs exactly as a user's bucket is (AWS_ENDPOINT_URL and the AWS
credential chain). Every wait is bounded; the server is stopped in teardown."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "augment-test-key-id",
    "AWS_SECRET_ACCESS_KEY": "augment-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Endpoint:
    url: str  # http://127.0.0.1:PORT
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs to reach this endpoint (the standard AWS variables, nothing else)."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.url}

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.url}, use_listings_cache=False,
                                 key=CREDENTIALS["AWS_ACCESS_KEY_ID"], secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])  # fmt: skip

    def objects(self, prefix: str) -> dict[str, bytes]:
        """{key under prefix: bytes} of every object below s3://bucket/prefix."""
        fs, root = self.fs(), "/".join(x for x in (self.bucket, prefix.strip("/")) if x)
        return {p[len(root) + 1 :]: fs.cat_file(p) for p in sorted(fs.find(root))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server(bucket: str = "augment-test", timeout: float = 60.0):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **CREDENTIALS},
    )
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto server on {url} did not start") from None
                time.sleep(0.2)
        endpoint = S3Endpoint(url, bucket)
        endpoint.fs().mkdir(bucket)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
