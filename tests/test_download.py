"""download through huggingface_hub against a local Hub on 127.0.0.1: presets, mirrors, resume, checksums, errors.

The server speaks the part of the Hub's `resolve` protocol that `hf_hub_download` uses (HEAD with X-Repo-Commit,
ETag and Content-Length; GET with Range/206). Every request huggingface_hub makes is recorded by the client
factory below, which refuses any host but 127.0.0.1, so no test reaches the internet.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import re
import socket
import threading
import types
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import file_download as hf_file_download
from huggingface_hub import set_client_factory
from huggingface_hub.utils import _detect_agent as hf_detect_agent
from huggingface_hub.utils import _http as hf_http

from rwkv1c.commands.download import download as download_verb
from rwkv1c.errors import UserError
from rwkv1c.machine import hub as dl

REPO = "BlinkDL/rwkv-7-world"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 64 * 1024  # huggingface_hub's download chunk, shrunk so a 1 MiB file is many chunks


@dataclass
class Hub:
    """What the local Hub serves and how it misbehaves; tests change it between requests."""

    files: dict[str, bytes] = field(default_factory=dict)
    etag: str | None = None  # default: the sha256 of the file, as the Hub gives for LFS files
    hub_headers: bool = True  # False: answer like a plain web server (no X-Repo-Commit / ETag)
    cut_after: int | None = None  # send the whole Content-Length, then close after this many body bytes
    cut_always: bool = False  # after the first cut, every GET closes before sending any body byte
    status: int | None = None  # answer every request with this status ...
    error_code: str | None = None  # ... and this X-Error-Code, as the Hub does
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range) per request


def make_handler(hub: Hub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.answer(body=False)

        def do_GET(self) -> None:
            self.answer(body=True)

        def answer(self, body: bool) -> None:
            hub.seen.append((self.command, self.path, self.headers.get("Range")))
            match = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.path)
            if hub.status is not None:
                self.fail(hub.status, hub.error_code)
                return
            name = urllib.parse.unquote(match["file"]) if match and match["repo"] == REPO else None
            if name not in hub.files:
                self.fail(404, "EntryNotFound" if match else None)
                return
            data = hub.files[name]
            start, code = 0, 200
            rng = self.headers.get("Range")
            if rng and body:
                start, code = int(rng.removeprefix("bytes=").split("-")[0]), 206
            self.send_response(code)
            if hub.hub_headers:
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hub.etag or hashlib.sha256(data).hexdigest()}"')
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            rest = data[start:]
            if hub.cut_after is not None:
                self.wfile.write(rest[: hub.cut_after])
                self.wfile.flush()
                hub.cut_after = 0 if hub.cut_always else None
                self.close_connection = True
                return
            self.wfile.write(rest)

        def fail(self, code: int, error_code: str | None) -> None:
            self.send_response(code)
            self.send_header("X-Repo-Commit", COMMIT)
            if error_code:
                self.send_header("X-Error-Code", error_code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@pytest.fixture
def requested(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[str]]:
    """Every URL huggingface_hub asks for, as 'METHOD url [Range]'; hosts other than 127.0.0.1 are refused."""
    urls: list[str] = []

    def loopback_only(request: httpx2.Request) -> None:
        urls.append(f"{request.method} {request.url} {request.headers.get('Range', '')}".rstrip())
        if request.url.host != "127.0.0.1":
            raise httpx2.ConnectError(f"tests stay on 127.0.0.1, not {request.url.host}", request=request)

    def client() -> httpx2.Client:
        hooks = [hf_http.hf_request_event_hook, loopback_only]
        return httpx2.Client(event_hooks={"request": hooks}, follow_redirects=True, timeout=10)

    # huggingface_hub reads these at import time; a test run must not depend on the caller's environment
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)  # no token lookup or refresh
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    # telemetry stays as the caller set it: `fetch` must turn it off (test_only_the_endpoint_is_contacted)
    monkeypatch.setattr(hf_constants, "AGENT_HARNESSES_PATH", str(tmp_path / "hf-home" / "agents.json"))
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", False)
    monkeypatch.setattr(hf_detect_agent, "_registry", None)
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    monkeypatch.setattr(hf_file_download, "time", types.SimpleNamespace(sleep=lambda s: None))  # retry waits
    monkeypatch.setattr(hf_http, "time", types.SimpleNamespace(sleep=lambda s: None))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    previous = hf_http._GLOBAL_CLIENT_FACTORY
    set_client_factory(client)
    try:
        yield urls
    finally:
        set_client_factory(previous)


@pytest.fixture
def hub(requested: list[str]) -> Iterator[tuple[str, Hub]]:
    state = Hub(files={"tiny.pth": bytes(range(256)) * 4096})  # 1 MiB
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()


def workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, sha: str | None = None, size: int | None = None, extra: str = ""
) -> Path:
    """A checkout with a `tiny` preset pointing at huggingface.co, like the real presets; returns models/base."""
    folder = tmp_path / "configs" / "model"
    folder.mkdir(parents=True)
    lines = ["PARAMS=8M", "N_LAYER=2", "N_EMBD=128", "CHECKPOINT=tiny.pth"]
    lines.append(f"URL=https://huggingface.co/{REPO}/resolve/main/tiny.pth")
    lines += [f"SHA256={sha}"] if sha else []
    lines += [f"SIZE_BYTES={size}"] if size else []
    (folder / "tiny.env").write_text("\n".join(lines) + "\n" + extra)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "models" / "base"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(models: Path) -> list[str]:
    """What is under models/ (hidden folders included), as paths relative to it."""
    return sorted(str(p.relative_to(models)) for p in models.rglob("*")) if models.exists() else []


def named_paths_exist(message: str) -> None:
    for path in re.findall(r"(/[^\s(),;:]+)", message):
        if path.startswith("/tmp") or path.startswith(str(Path.cwd())):
            assert Path(path.rstrip(".")).exists(), f"the message names {path}, which does not exist:\n{message}"


# ---------------------------------------------------------------- presets, mirrors, the end-to-end path


def test_preset_download_end_to_end(
    hub: tuple[str, Hub],
    requested: list[str],
    tmp_path: Path,
    tiny_pth: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A preset through HF_ENDPOINT, a real tiny checkpoint, sha256 and size checked, then inspect."""
    base, state = hub
    payload = tiny_pth.read_bytes()
    state.files["tiny.pth"] = payload
    models = workspace(tmp_path, monkeypatch, sha=sha(payload), size=len(payload))
    monkeypatch.setenv("HF_ENDPOINT", base)
    download_verb("tiny")
    out, err = capsys.readouterr()
    assert (models / "tiny.pth").read_bytes() == payload
    assert leftovers(models) == ["tiny.pth"]  # the staging folder is gone
    assert f"sha256 {sha(payload)} as expected" in err
    assert "layers" in out and "128" in out  # inspect's description of the downloaded file
    file = f"{base}/{REPO}/resolve/main/tiny.pth"
    assert requested == [f"HEAD {file}", f"HEAD {file}", f"GET {file}"]  # only the endpoint, no telemetry


def test_mirror_from_workspace_env(
    hub: tuple[str, Hub], requested: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = hub
    models = workspace(tmp_path, monkeypatch, sha=sha(state.files["tiny.pth"]))
    (tmp_path / "configs" / "workspace.env").write_text(f"HF_ENDPOINT={base}/\n")
    download_verb("tiny", inspect=False)
    assert (models / "tiny.pth").read_bytes() == state.files["tiny.pth"]
    assert requested and all(u.split()[1].startswith(base + "/") for u in requested)


def test_hf_endpoint_in_the_environment_beats_workspace_env(
    hub: tuple[str, Hub], requested: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = hub
    models = workspace(tmp_path, monkeypatch)
    (tmp_path / "configs" / "workspace.env").write_text("HF_ENDPOINT=http://127.0.0.1:9\n")  # nothing there
    monkeypatch.setenv("HF_ENDPOINT", base)
    download_verb("tiny", inspect=False)
    assert (models / "tiny.pth").read_bytes() == state.files["tiny.pth"]
    assert not any("127.0.0.1:9/" in u for u in requested)


def test_without_hf_endpoint_a_preset_goes_to_huggingface_co(
    requested: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default endpoint, and the guard that keeps the tests off the internet."""
    models = workspace(tmp_path, monkeypatch)
    with pytest.raises(UserError, match="tests stay on 127.0.0.1"):
        download_verb("tiny", inspect=False)
    assert requested == [f"HEAD https://huggingface.co/{REPO}/resolve/main/tiny.pth"]
    assert leftovers(models) == []


def test_hub_url_on_a_mirror_host_downloads_through_that_host(
    hub: tuple[str, Hub], requested: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = hub
    state.files["a b.pth"] = b"x" * 1000
    models = workspace(tmp_path, monkeypatch)
    with pytest.raises(UserError, match="not a usable RWKV-7 checkpoint"):  # bytes, not a model: set aside
        download_verb(f"{base}/{REPO}/resolve/main/a%20b.pth?download=true")
    assert leftovers(models) == ["a b.pth.rejected"]
    assert requested[0] == f"HEAD {base}/{REPO}/resolve/main/a%20b.pth"


def test_url_sources() -> None:
    mirror = "https://mirror.example"
    src = dl.resolve_source("https://huggingface.co/BlinkDL/rwkv7-g1/resolve/main/a%20b.pth", mirror)
    assert (src.endpoint, src.repo_id, src.filename, src.revision) == (mirror, "BlinkDL/rwkv7-g1", "a b.pth", "main")
    assert src.url == f"{mirror}/BlinkDL/rwkv7-g1/resolve/main/a%20b.pth"
    web = dl.resolve_source("https://hf-mirror.com/hf/BlinkDL/x/blob/refs%2Fpr%2F1/sub/m.pth", mirror)
    assert (web.endpoint, web.repo_id, web.revision, web.filename, web.local_name) == (
        "https://hf-mirror.com/hf",
        "BlinkDL/x",
        "refs/pr/1",
        "sub/m.pth",
        "m.pth",
    )
    with pytest.raises(UserError, match="not the address of a file on a Hugging Face Hub"):
        dl.resolve_source("https://example.com/files/model.pth", mirror)


def test_every_shipped_preset_names_a_hub_file() -> None:
    from rwkv1c.config import preset_names

    for name in preset_names():
        src = dl.resolve_source(name, "https://huggingface.co")
        assert src.repo_id.startswith("BlinkDL/") and src.filename.endswith(".pth") and src.revision == "main"
        assert src.local_name == src.filename and src.sha256 and len(src.sha256) == 64


def test_hf_endpoint_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    assert dl.hf_endpoint("https://huggingface.co") == "https://mirror.example"
    monkeypatch.delenv("HF_ENDPOINT")
    assert dl.hf_endpoint("https://ws.example") == "https://ws.example"
    assert dl.hf_endpoint(None) == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "mirror.example")
    with pytest.raises(UserError, match="not an http"):
        dl.hf_endpoint(None)


def test_preset_without_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "configs" / "model").mkdir(parents=True)
    (tmp_path / "configs" / "model" / "empty.env").write_text("PARAMS=1B\nN_LAYER=2\nN_EMBD=128\nCHECKPOINT=\n")
    with pytest.raises(UserError, match="names no checkpoint"):
        dl.resolve_source("empty", "https://huggingface.co", tmp_path)


def test_plain_url_is_refused_without_touching_the_network(
    requested: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace(tmp_path, monkeypatch)
    with pytest.raises(UserError, match="rwkv1c inspect"):
        download_verb("http://127.0.0.1:9/files/model.pth")
    assert requested == []


# ---------------------------------------------------------------- resume, interruptions


def test_dropped_connection_is_resumed_with_a_range_request(
    hub: tuple[str, Hub], requested: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = hub
    payload = state.files["tiny.pth"]
    models = workspace(tmp_path, monkeypatch, sha=sha(payload))
    monkeypatch.setenv("HF_ENDPOINT", base)
    state.cut_after = 5 * CHUNK
    download_verb("tiny", inspect=False)
    assert (models / "tiny.pth").read_bytes() == payload
    assert [r for m, _, r in state.seen if m == "GET"] == [None, f"bytes={5 * CHUNK}-"]


def test_a_connection_that_keeps_dropping_fails_cleanly(
    hub: tuple[str, Hub], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """huggingface_hub gives up after its retries; the error says what to do and names nothing that is not there."""
    base, state = hub
    models = workspace(tmp_path, monkeypatch, sha=sha(state.files["tiny.pth"]))
    monkeypatch.setenv("HF_ENDPOINT", base)
    state.cut_after, state.cut_always = CHUNK, True
    with pytest.raises(UserError, match="failed") as err:
        download_verb("tiny", inspect=False)
    message = str(err.value)
    assert "run the same command again" in message and "starts over" in message
    assert ".part" not in message and ".incomplete" not in message
    named_paths_exist(message)
    assert leftovers(models) == []
    gets = [r for m, _, r in state.seen if m == "GET"]
    assert len(gets) > 2 and gets[1] == f"bytes={CHUNK}-"  # it did try to resume


def test_server_down_is_a_clear_error_naming_only_what_exists(
    requested: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    models = workspace(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(UserError, match=f"from http://127.0.0.1:{port} failed") as err:
        download_verb("tiny", inspect=False)
    message = str(err.value)
    assert "HF_ENDPOINT" in message and "tiny.pth.part" not in message
    named_paths_exist(message)
    assert leftovers(models) == []


def test_stale_files_of_a_killed_download_are_cleared(
    hub: tuple[str, Hub], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = hub
    models = workspace(tmp_path, monkeypatch)
    stale = models / dl.STAGING / "tiny.pth" / ".cache" / "huggingface" / "download" / "x.1234.incomplete"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")
    monkeypatch.setenv("HF_ENDPOINT", base)
    download_verb("tiny", inspect=False)
    assert leftovers(models) == ["tiny.pth"]


# ---------------------------------------------------------------- checksums and sizes


def test_preset_sha256_the_hub_contradicts_is_refused_before_downloading(
    hub: tuple[str, Hub], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = hub
    models = workspace(tmp_path, monkeypatch, sha="0" * 64)
    monkeypatch.setenv("HF_ENDPOINT", base)
    with pytest.raises(UserError, match="not the file the preset describes") as err:
        download_verb("tiny", inspect=False)
    assert sha(state.files["tiny.pth"]) in str(err.value) and "SHA256" in str(err.value)
    assert [m for m, _, _ in state.seen] == ["HEAD"]  # no byte of the file was fetched
    assert leftovers(models) == []


def test_preset_size_the_hub_contradicts_is_refused_before_downloading(
    hub: tuple[str, Hub], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = hub
    workspace(tmp_path, monkeypatch, size=len(state.files["tiny.pth"]) + 1)
    monkeypatch.setenv("HF_ENDPOINT", base)
    with pytest.raises(UserError, match="the preset expects"):
        download_verb("tiny", inspect=False)
    assert [m for m, _, _ in state.seen] == ["HEAD"]


def test_downloaded_bytes_with_the_wrong_sha256_are_removed(
    hub: tuple[str, Hub], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mirror that claims the right file but serves other bytes: caught after the download, nothing kept."""
    base, state = hub
    expected = sha(b"the real checkpoint")
    state.etag = expected
    models = workspace(tmp_path, monkeypatch, sha=expected)
    monkeypatch.setenv("HF_ENDPOINT", base)
    with pytest.raises(UserError, match="not the expected file") as err:
        download_verb("tiny", inspect=False)
    assert sha(state.files["tiny.pth"]) in str(err.value) and "removed" in str(err.value)
    assert leftovers(models) == []


def test_a_url_without_preset_is_checked_against_the_hubs_sha256(
    hub: tuple[str, Hub], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = hub
    state.etag = "f" * 64
    models = workspace(tmp_path, monkeypatch)
    with pytest.raises(UserError, match=f"expected {'f' * 64}"):
        download_verb(f"{base}/{REPO}/resolve/main/tiny.pth", inspect=False)
    assert leftovers(models) == []


def test_existing_file_is_checked_not_refetched(
    hub: tuple[str, Hub], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = hub
    models = workspace(tmp_path, monkeypatch, sha=sha(state.files["tiny.pth"]))
    models.mkdir(parents=True)
    (models / "tiny.pth").write_bytes(b"not the payload")
    monkeypatch.setenv("HF_ENDPOINT", base)
    with pytest.raises(UserError, match="not the expected file"):
        download_verb("tiny", inspect=False)
    assert state.seen == []


# ---------------------------------------------------------------- what the Hub or the machine refuses


@pytest.mark.parametrize("error_code", ["EntryNotFound", None])
def test_404_is_a_clear_error(
    hub: tuple[str, Hub], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error_code: str | None
) -> None:
    base, state = hub
    state.status, state.error_code = 404, error_code
    models = workspace(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", base)
    with pytest.raises(UserError, match="not found \\(HTTP 404\\)") as err:
        download_verb("tiny", inspect=False)
    assert "configs/model" in str(err.value) and "HF_ENDPOINT" in str(err.value)
    assert leftovers(models) == []


@pytest.mark.parametrize(("status", "error_code"), [(401, "RepoNotFound"), (403, "GatedRepo"), (403, None)])
def test_refused_access_is_a_clear_error(
    hub: tuple[str, Hub], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, error_code: str | None
) -> None:
    base, state = hub
    state.status, state.error_code = status, error_code
    workspace(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", base)
    with pytest.raises(UserError, match=f"access refused \\(HTTP {status}\\)") as err:
        download_verb("tiny", inspect=False)
    assert "gated" in str(err.value) and "HF_TOKEN" in str(err.value)


def test_a_server_that_is_not_a_hub_is_named(
    hub: tuple[str, Hub], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = hub
    state.hub_headers = False
    workspace(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", base)
    with pytest.raises(UserError, match="does not answer like a Hugging Face Hub"):
        download_verb("tiny", inspect=False)
    assert [m for m, _, _ in state.seen] == ["HEAD"]


def test_too_little_disk_space_is_refused_before_downloading(
    hub: tuple[str, Hub], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = hub
    workspace(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", base)
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda _p: types.SimpleNamespace(free=1000, total=1, used=0))
    with pytest.raises(UserError, match="not enough disk space"):
        download_verb("tiny", inspect=False)
    assert [m for m, _, _ in state.seen] == ["HEAD"]


def test_disk_full_while_writing_is_a_clear_error(
    hub: tuple[str, Hub], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def full(*args: object, **kwargs: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    base, _ = hub
    models = workspace(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", base)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", full)
    with pytest.raises(UserError, match="disk full") as err:
        download_verb("tiny", inspect=False)
    named_paths_exist(str(err.value))
    assert leftovers(models) == []


def test_offline_mode_is_named(requested: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace(tmp_path, monkeypatch)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        download_verb("tiny", inspect=False)
    assert requested == []
