"""Downloads: verification, atomic rename, resume, and a fast, helpful failure when offline.
file:// URLs, plus a loopback HTTP server for the Range (resume) path; nothing leaves the machine."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time

import pytest

from eldistill.cli import main
from eldistill.download import DownloadError, download

PAYLOAD = bytes(range(256)) * 4000  # 1 MB, not a multiple of the 1 MiB chunk
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src" / "teacher.pkl"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def test_file_url_download_verifies_and_leaves_no_part(source, tmp_path):
    out = tmp_path / "dl" / "teacher.pkl"
    assert download(source.as_uri(), out, sha256=DIGEST, size=len(PAYLOAD)) == out
    assert out.read_bytes() == PAYLOAD
    assert list(out.parent.iterdir()) == [out]


def test_partial_file_is_resumed_not_refetched(source, tmp_path):
    out = tmp_path / "teacher.pkl"
    # a .part whose first bytes differ from the source's: if they survive, the download resumed
    prefix = b"\xff" * 1000
    (tmp_path / "teacher.pkl.part").write_bytes(prefix)
    download(source.as_uri(), out)
    assert out.read_bytes() == prefix + PAYLOAD[1000:]


def test_resume_with_correct_prefix_verifies(source, tmp_path):
    out = tmp_path / "teacher.pkl"
    (tmp_path / "teacher.pkl.part").write_bytes(PAYLOAD[:12345])
    download(source.as_uri(), out, sha256=DIGEST, size=len(PAYLOAD))
    assert out.read_bytes() == PAYLOAD


def test_wrong_sha256_names_file_and_leaves_nothing(source, tmp_path):
    out = tmp_path / "teacher.pkl"
    with pytest.raises(DownloadError, match="teacher.pkl: sha256 is " + DIGEST):
        download(source.as_uri(), out, sha256="0" * 64)
    assert list(tmp_path.glob("teacher.pkl*")) == []


def test_wrong_size_is_refused(source, tmp_path):
    with pytest.raises(DownloadError, match=f"expected {len(PAYLOAD) + 1}"):
        download(source.as_uri(), tmp_path / "t.pkl", size=len(PAYLOAD) + 1)
    assert not (tmp_path / "t.pkl").exists()


def test_existing_good_file_is_kept_without_fetching(tmp_path):
    out = tmp_path / "teacher.pkl"
    out.write_bytes(PAYLOAD)
    assert download((tmp_path / "gone.pkl").as_uri(), out, sha256=DIGEST) == out  # the URL does not exist


def test_existing_bad_file_is_not_replaced_silently(source, tmp_path):
    out = tmp_path / "teacher.pkl"
    out.write_bytes(b"corrupt")
    with pytest.raises(DownloadError, match="delete it"):
        download(source.as_uri(), out, sha256=DIGEST)
    assert out.read_bytes() == b"corrupt"


def test_bad_sha256_argument_is_named(source, tmp_path):
    with pytest.raises(DownloadError, match="sha256 must be 64 hex"):
        download(source.as_uri(), tmp_path / "x", sha256="abc")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fails_at_once_naming_the_file_and_where_to_put_it(tmp_path):
    out = tmp_path / "edm-cifar10-32x32-uncond-vp.pkl"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download(f"http://127.0.0.1:{_closed_port()}/edm.pkl", out, sha256=DIGEST, timeout=2)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "edm-cifar10-32x32-uncond-vp.pkl" in message and str(out.resolve()) in message and DIGEST in message
    assert not out.exists()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    honour_range = True
    requests: list[str | None] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if (rng and self.honour_range) else 0
        if start >= len(PAYLOAD):
            self.send_response(416)
            self.end_headers()
            return
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    handler = type("Handler", (_RangeHandler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/teacher.pkl"
    httpd.shutdown()
    httpd.server_close()


def test_http_resume_sends_range_and_appends(server, tmp_path):
    handler, url = server
    out = tmp_path / "teacher.pkl"
    (tmp_path / "teacher.pkl.part").write_bytes(PAYLOAD[:5000])
    download(url, out, sha256=DIGEST, size=len(PAYLOAD))
    assert out.read_bytes() == PAYLOAD
    assert handler.requests == ["bytes=5000-"]


def test_http_server_without_range_support_restarts_cleanly(server, tmp_path):
    handler, url = server
    handler.honour_range = False
    out = tmp_path / "teacher.pkl"
    (tmp_path / "teacher.pkl.part").write_bytes(b"\x00" * 5000)
    download(url, out, sha256=DIGEST)
    assert out.read_bytes() == PAYLOAD


def test_http_complete_part_is_finished_on_416(server, tmp_path):
    _, url = server
    out = tmp_path / "teacher.pkl"
    (tmp_path / "teacher.pkl.part").write_bytes(PAYLOAD)
    download(url, out, sha256=DIGEST)
    assert out.read_bytes() == PAYLOAD


def test_cli_exit_codes(source, tmp_path, capsys):
    out = tmp_path / "c.pkl"
    assert main(["download", "--url", source.as_uri(), "--out", str(out), "--sha256", DIGEST]) == 0
    assert out.read_bytes() == PAYLOAD
    assert main(["download", "--url", source.as_uri(), "--out", str(tmp_path / "d.pkl"), "--size", "3"]) == 1
    assert "d.pkl" in capsys.readouterr().err
