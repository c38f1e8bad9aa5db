"""Real servers on loopback for the remote-shard tests: moto's S3 server and an HTTP file server
that answers byte ranges and can break a connection at a chosen byte (as a reset network does).

Both are started by fixtures on a free port and stopped (and their threads joined) at teardown.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BUCKET = "wallwm-shards"


@dataclass
class Faults:
    """``path -> (byte, times)``: the next ``times`` responses carrying ``byte`` of the file at
    ``path`` (URL path) stop at that byte and reset the connection (times < 0: every one)."""

    at: dict = field(default_factory=dict)
    broken: list = field(default_factory=list)  # (path, start) of each response cut

    def take(self, path: str, start: int, end: int) -> int | None:
        byte, times = self.at.get(path, (None, 0))
        if byte is None or times == 0 or not start <= byte < end:
            return None
        if times > 0:
            self.at[path] = (byte, times - 1)
        self.broken.append((path, start))
        return byte


def _handler(root: Path, faults: Faults):
    class RangeHandler(SimpleHTTPRequestHandler):
        """Serves ``root`` with single byte ranges (http.server answers whole files only)."""

        def __init__(self, *args, **kw):
            super().__init__(*args, directory=str(root), **kw)

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            path = Path(self.translate_path(self.path))
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start, end = 0, len(data)
            spec = self.headers.get("Range", "")
            if spec.startswith("bytes="):
                first, _, last = spec[6:].partition("-")
                start = int(first or 0)
                end = min(len(data), int(last) + 1 if last else len(data))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            cut = faults.take(self.path, start, end)
            if cut is None:
                self.wfile.write(data[start:end])
                return
            self.wfile.write(data[start:cut])
            self.wfile.flush()
            # an abortive close: the peer sees a reset, not a clean end of the response
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

    return RangeHandler


class HttpServer:
    def __init__(self, root: Path) -> None:
        self.faults = Faults()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(root, self.faults))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        assert_closed(self.url)


class S3Server:
    """moto's standalone S3 server; the AWS_* environment points boto and s3fs at it."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.env = {"AWS_ACCESS_KEY_ID": "wallwm-test-key", "AWS_SECRET_ACCESS_KEY": "wallwm-test-secret",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def upload(self, folder: Path, prefix: str) -> str:
        """Every file of ``folder`` under ``s3://BUCKET/prefix/``; returns that URL."""
        client = self.client()
        if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
            client.create_bucket(Bucket=BUCKET)
        for path in sorted(folder.iterdir()):
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")
        return f"s3://{BUCKET}/{prefix}"

    def stop(self) -> None:
        self.server.stop()
        assert_closed(self.endpoint)


def assert_closed(url: str) -> None:
    """Nothing listens at ``url`` any more."""
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        assert sock.connect_ex((host, int(port))) != 0, f"{url} still answers after stop"


def clear_fs_instances() -> None:
    """fsspec keeps one file-system object per set of arguments; the next test's server listens
    on another port, so the objects made for this one must go."""
    import fsspec

    for proto in ("s3", "http", "https"):
        try:
            fsspec.get_filesystem_class(proto).clear_instance_cache()
        except (ImportError, ValueError):
            pass
