"""download against a local HTTP server on 127.0.0.1: resume after a cut connection, checksum, 404, mirrors."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rwkv1c.commands.download import download as download_verb
from rwkv1c.errors import UserError
from rwkv1c.machine import hub as dl

FILE_PATH = "/BlinkDL/rwkv-7-world/resolve/main/tiny.pth"


@dataclass
class Behaviour:
    """What the test server does; tests change it between requests."""

    payload: bytes = b""
    cut_after: int | None = None  # send the full Content-Length, then close after this many body bytes (once)
    honour_range: bool = True
    requests: list[str | None] = field(default_factory=list)  # the Range header of each request


def make_handler(b: Behaviour) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            b.requests.append(self.headers.get("Range"))
            if self.path != FILE_PATH:
                self.send_error(404, "Not Found")
                return
            data, start = b.payload, 0
            rng = self.headers.get("Range")
            if rng and b.honour_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if b.cut_after is not None:
                self.wfile.write(body[: b.cut_after])
                self.wfile.flush()
                b.cut_after = None
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    b = Behaviour(payload=bytes(range(256)) * 4096)  # 1 MiB
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(b))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", b
    finally:
        httpd.shutdown()
        httpd.server_close()


def source(base: str, b: Behaviour, *, sha: str | None = "ok", size: int | None = None) -> dl.Source:
    digest = hashlib.sha256(b.payload).hexdigest() if sha == "ok" else sha
    return dl.Source(base + FILE_PATH, "tiny.pth", size, digest)


def test_plain_download_verifies_and_renames(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    base, b = server
    path = dl.fetch(source(base, b, size=len(b.payload)), tmp_path, progress=False)
    assert path == tmp_path / "tiny.pth" and path.read_bytes() == b.payload
    assert not (tmp_path / "tiny.pth.part").exists()


def test_cut_connection_leaves_part_then_resumes(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    base, b = server
    b.cut_after = 300_000
    with pytest.raises(UserError, match="interrupted") as err:
        dl.fetch(source(base, b), tmp_path, retries=0, progress=False)
    assert "resumes" in str(err.value)
    part = tmp_path / "tiny.pth.part"
    assert part.stat().st_size == 300_000 and not (tmp_path / "tiny.pth").exists()
    path = dl.fetch(source(base, b), tmp_path, retries=0, progress=False)
    assert path.read_bytes() == b.payload
    assert b.requests[-1] == "bytes=300000-"  # the second run asked only for the rest


def test_automatic_retry_resumes_within_one_call(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    base, b = server
    b.cut_after = 123_456
    path = dl.fetch(source(base, b), tmp_path, retries=2, progress=False)
    assert path.read_bytes() == b.payload
    assert b.requests == [None, "bytes=123456-"]


def test_server_without_range_support_restarts_cleanly(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    base, b = server
    (tmp_path / "tiny.pth.part").write_bytes(b"garbage that must not stay at the front")
    b.honour_range = False
    path = dl.fetch(source(base, b), tmp_path, progress=False)
    assert path.read_bytes() == b.payload


def test_complete_part_is_finished_without_refetching(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    base, b = server
    (tmp_path / "tiny.pth.part").write_bytes(b.payload)
    path = dl.fetch(source(base, b), tmp_path, progress=False)  # size unknown: the server answers 416
    assert path.read_bytes() == b.payload and b.requests == [f"bytes={len(b.payload)}-"]


def test_wrong_checksum_fails_and_removes_the_part(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    base, b = server
    with pytest.raises(UserError, match="sha256") as err:
        dl.fetch(source(base, b, sha="0" * 64), tmp_path, progress=False)
    assert hashlib.sha256(b.payload).hexdigest() in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_with_preset_is_refused(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    base, b = server
    with pytest.raises(UserError, match="expects"):
        dl.fetch(source(base, b, size=len(b.payload) + 1), tmp_path, progress=False)


def test_404_is_a_clear_error(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    base, _ = server
    src = dl.Source(base + "/BlinkDL/rwkv-7-world/resolve/main/missing.pth", "missing.pth")
    with pytest.raises(UserError, match="404") as err:
        dl.fetch(src, tmp_path, progress=False)
    assert "HF_ENDPOINT" in str(err.value)
    assert not (tmp_path / "missing.pth").exists()


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match="interrupted"):
        dl.fetch(dl.Source(f"http://127.0.0.1:{port}/x.pth", "x.pth"), tmp_path, retries=0, progress=False)


def test_existing_file_is_checked_not_refetched(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    base, b = server
    (tmp_path / "tiny.pth").write_bytes(b"not the payload")
    with pytest.raises(UserError, match="not the expected file"):
        dl.fetch(source(base, b), tmp_path, progress=False)
    assert b.requests == []


def test_endpoint_rewrites_only_huggingface_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    end = dl.hf_endpoint("https://huggingface.co")
    assert end == "https://mirror.example"
    assert dl.with_endpoint("https://huggingface.co/BlinkDL/x/resolve/main/a.pth", end) == (
        "https://mirror.example/BlinkDL/x/resolve/main/a.pth"
    )
    assert dl.with_endpoint("https://other.example/a.pth", end) == "https://other.example/a.pth"
    monkeypatch.delenv("HF_ENDPOINT")
    assert dl.hf_endpoint(None) == "https://huggingface.co"


def test_download_verb_by_preset_through_hf_endpoint(
    server: tuple[str, Behaviour],
    tmp_path: Path,
    tiny_pth: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """End to end: a preset, HF_ENDPOINT pointing at the loopback server, a real tiny checkpoint, then inspect."""
    base, b = server
    b.payload = tiny_pth.read_bytes()
    sha = hashlib.sha256(b.payload).hexdigest()
    (tmp_path / "configs" / "model").mkdir(parents=True)
    (tmp_path / "configs" / "model" / "tiny.env").write_text(
        f"PARAMS=8M\nN_LAYER=2\nN_EMBD=128\nCHECKPOINT=tiny.pth\nSHA256={sha}\nSIZE_BYTES={len(b.payload)}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", base)
    b.cut_after = len(b.payload) // 3
    download_verb("tiny", retries=1)
    out = capsys.readouterr().out
    assert (tmp_path / "models" / "base" / "tiny.pth").read_bytes() == b.payload
    assert "layers" in out and "128" in out  # inspect's description of the downloaded file
    assert b.requests[1] == f"bytes={len(b.payload) // 3}-"


def test_preset_without_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "configs" / "model").mkdir(parents=True)
    (tmp_path / "configs" / "model" / "empty.env").write_text("PARAMS=1B\nN_LAYER=2\nN_EMBD=128\nCHECKPOINT=\n")
    with pytest.raises(UserError, match="names no checkpoint"):
        dl.resolve_source("empty", "https://huggingface.co", tmp_path)


def test_url_source_takes_its_file_name() -> None:
    src = dl.resolve_source("https://huggingface.co/BlinkDL/rwkv7-g1/resolve/main/a%20b.pth", "http://127.0.0.1:9")
    assert src.filename == "a b.pth" and src.url.startswith("http://127.0.0.1:9/BlinkDL/")


def test_a_download_that_is_not_a_checkpoint_is_moved_aside(
    server: tuple[str, Behaviour], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL with no checksum to compare with: the file is checked by loading it, and set aside if it fails."""
    base, b = server
    b.payload = b"<html>not a model</html>" * 100
    (tmp_path / "configs" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="not a usable RWKV-7 checkpoint"):
        download_verb(base + FILE_PATH, retries=0)
    base_dir = tmp_path / "models" / "base"
    assert sorted(p.name for p in base_dir.iterdir()) == ["tiny.pth.rejected"]
