"""Fetching an official RWKV-7 checkpoint from the Hugging Face Hub into models/base/ and verifying it.

`rwkv1c download` goes through huggingface_hub's `hf_hub_download`, which speaks the Hub's protocol: the
`resolve` call, redirects to the LFS/Xet storage, the Xet chunk protocol when `hf_xet` is installed, a
dropped connection resumed with an HTTP Range request. The endpoint is HF_ENDPOINT from the environment,
else from configs/workspace.env, and is passed to huggingface_hub explicitly (its own reading of the
variable happens once, at import).

A source is a preset (configs/model/*.env: CHECKPOINT, URL, SIZE_BYTES, SHA256) or a Hub file URL,
`https://<host>/<owner>/<repo>/resolve/<revision>/<path>`: a huggingface.co URL goes through HF_ENDPOINT,
a URL on another host is read as that host's own Hub mirror. Other URLs are refused: the file is not a
release on the Hub, so download it yourself into models/base/ (`rwkv1c inspect` checks it).

Before any byte is fetched, the Hub's size and sha256 (the ETag of an LFS file) are compared with the
preset's and the free disk space with the size. The file lands in models/base/.download/<name>/, is
checked against the sha256 (the preset's, else the Hub's), and only then is renamed to
models/base/<name>: a `.pth` there is always whole and verified. A download that fails keeps no partial
file (huggingface_hub discards it), so running the command again starts that file over.

This is the only command that uses the network.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rwkv1c.errors import UserError

HF_HOST = "https://huggingface.co"
DEFAULT_REPO = "BlinkDL/rwkv-7-world"
STAGING = ".download"  # under MODELS_DIR; hidden, so `models/base/*.pth` never sees a file in progress
_HF_HOSTS = ("huggingface.co", "hf.co", "www.huggingface.co")
_HUB_URL = re.compile(
    r"^(?P<endpoint>https?://[^/?#]+(?:/[^?#]*?)?)/(?P<repo>[^/?#]+/[^/?#]+)"
    r"/(?:resolve|blob)/(?P<revision>[^/?#]+)/(?P<path>[^?#]+)(?:[?#].*)?$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Source:
    """A file on a Hub (or a Hub mirror) and what it must be."""

    repo_id: str
    filename: str  # path inside the repository
    revision: str = "main"
    endpoint: str = HF_HOST
    name: str = ""  # the name under models/base/ (default: the file's own name)
    size: int | None = None
    sha256: str | None = None

    @property
    def local_name(self) -> str:
        return self.name or self.filename.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        revision = urllib.parse.quote(self.revision, safe="")
        return f"{self.endpoint}/{self.repo_id}/resolve/{revision}/{urllib.parse.quote(self.filename)}"


def hf_endpoint(configured: str | None = None) -> str:
    """HF_ENDPOINT from the environment, else the workspace setting, else huggingface.co (no trailing /)."""
    value = (os.environ.get("HF_ENDPOINT") or configured or HF_HOST).strip().rstrip("/")
    if not re.match(r"^https?://[^/]+", value):
        raise UserError(
            f"HF_ENDPOINT={value!r} is not an http(s) address",
            hint="set it to a Hugging Face Hub or mirror, e.g. HF_ENDPOINT=https://huggingface.co",
        )
    return value


def parse_hub_url(url: str, endpoint: str) -> Source:
    """A Hub file URL as a Source; huggingface.co URLs are pointed at ``endpoint`` (the configured mirror)."""
    match = _HUB_URL.match(url.strip())
    if not match:
        raise UserError(
            f"{url!r} is not the address of a file on a Hugging Face Hub",
            hint="give https://<host>/<owner>/<repo>/resolve/<revision>/<file>.pth (a preset name also works); "
            "for a file from elsewhere, download it into models/base/ yourself and check it with `rwkv1c inspect`",
        )
    base = match["endpoint"]
    if urllib.parse.urlsplit(base).hostname in _HF_HOSTS:
        base = endpoint
    unquote = urllib.parse.unquote
    return Source(unquote(match["repo"]), unquote(match["path"]), unquote(match["revision"]), base.rstrip("/"))


def resolve_source(source: str, endpoint: str, root: Path | None = None) -> Source:
    """A preset name (configs/model/<name>.env) or a Hub file URL."""
    if re.match(r"^https?://", source):
        return parse_hub_url(source, endpoint)
    from rwkv1c.config import load_preset

    preset = load_preset(source, root)
    if not preset.checkpoint and not preset.url:
        raise UserError(
            f"preset {preset.name} names no checkpoint to download",
            hint=f"set CHECKPOINT (and URL) in configs/model/{preset.name}.env, or give the URL directly",
        )
    url = preset.url or f"{HF_HOST}/{DEFAULT_REPO}/resolve/main/{urllib.parse.quote(preset.checkpoint)}"
    try:
        src = parse_hub_url(url, endpoint)
    except UserError as exc:
        raise UserError(f"configs/model/{preset.name}.env: URL {exc.args[0]}", hint=exc.hint) from None
    return Source(
        src.repo_id,
        src.filename,
        src.revision,
        src.endpoint,
        name=preset.checkpoint,
        size=preset.size_bytes or None,
        sha256=preset.sha256.lower() or None,
    )


def fetch(src: Source, dest_dir: Path) -> Path:
    """Download ``src`` into ``dest_dir`` through huggingface_hub, verify it, and rename it into place."""
    from rwkv1c.fsutil import sha256_file

    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / src.local_name
    if final.exists():
        print(f"{final} already exists; checking it", file=sys.stderr)
        verify(final, src.size, src.sha256, sha256_file(final), fix=f"delete {final} and run the command again")
        return final
    with _endpoint_only():
        size, sha256 = expected(src, dest_dir)
        _download(src, final, size, sha256)
    return final


@contextlib.contextmanager
def _endpoint_only() -> Iterator[None]:
    """Keep huggingface_hub's user-agent telemetry off while downloading.

    It adds a registry of coding tools fetched from huggingface.co itself, whatever the endpoint: a machine
    set up for a mirror would still call huggingface.co. With it off, only the endpoint is contacted.
    """
    from huggingface_hub import constants

    before = constants.HF_HUB_DISABLE_TELEMETRY
    constants.HF_HUB_DISABLE_TELEMETRY = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_TELEMETRY = before


def _download(src: Source, final: Path, size: int | None, sha256: str | None) -> None:
    """hf_hub_download into models/base/.download/<name>/, check the sha256, rename to ``final``; clean up."""
    from huggingface_hub import hf_hub_download

    from rwkv1c.fsutil import sha256_file

    staging = final.parent / STAGING / src.local_name
    for stale in staging.rglob("*.incomplete"):  # left by a download that was killed; never resumed
        stale.unlink()
    try:
        got = Path(
            hf_hub_download(
                src.repo_id,
                src.filename,
                revision=src.revision,
                endpoint=src.endpoint,
                local_dir=staging,
                library_name="rwkv1c",
            )
        )
        fix = "the download was removed; run the command again. If it repeats, the mirror serves another file"
        verify(got, size, sha256, sha256_file(got), fix=fix)
        os.replace(got, final)
    except Exception as exc:
        err = exc if isinstance(exc, UserError) else explain(exc, src, final.parent)
        if err is None:
            raise
        raise err from None
    finally:
        _remove_staging(staging)


def expected(src: Source, dest_dir: Path) -> tuple[int | None, str | None]:
    """Ask the Hub for the file's size and sha256; refuse a file that contradicts the preset or the free space."""
    from huggingface_hub import get_hf_file_metadata

    try:
        meta = get_hf_file_metadata(src.url, endpoint=src.endpoint, library_name="rwkv1c")
    except Exception as exc:
        err = explain(exc, src, dest_dir)
        if err is None:
            raise
        raise err from None
    if meta.commit_hash is None or meta.etag is None:
        raise UserError(
            f"{src.endpoint} does not answer like a Hugging Face Hub (no X-Repo-Commit/ETag for {src.url})",
            hint="HF_ENDPOINT (environment or configs/workspace.env) must be the Hub or a Hub mirror",
        )
    hub_sha = meta.etag.lower() if _SHA256.match(meta.etag.lower()) else None
    problems = []
    if src.size is not None and meta.size is not None and meta.size != src.size:
        problems.append(f"size {meta.size} bytes, the preset expects {src.size}")
    if src.sha256 and hub_sha and hub_sha != src.sha256:
        problems.append(f"sha256 {hub_sha}, the preset expects {src.sha256}")
    if problems:
        raise UserError(
            f"{src.url} is not the file the preset describes: " + "; ".join(problems),
            hint="nothing was downloaded. The file changed upstream or the mirror serves another one: "
            "fix SIZE_BYTES/SHA256 in the preset, or try another HF_ENDPOINT",
        )
    size = src.size or meta.size
    free = shutil.disk_usage(dest_dir).free
    if size is not None and free < size:
        raise UserError(
            f"not enough disk space for {src.local_name}: it needs {size / 1e9:.2f} GB ({size} bytes), "
            f"{dest_dir} has {free / 1e9:.2f} GB free",
            hint="free some space there (or point MODELS_DIR in configs/workspace.env elsewhere) and run again",
        )
    return size, src.sha256 or hub_sha


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes/contexts, outermost first (huggingface_hub wraps what went wrong)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def explain(exc: BaseException, src: Source, dest_dir: Path) -> UserError | None:
    """A one-paragraph UserError for what went wrong talking to the Hub, or None for an unexpected error."""
    import httpx2
    from huggingface_hub.errors import FileMetadataError, HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

    chain = _chain(exc)

    def find(kind: Any) -> Any:
        return next((e for e in chain if isinstance(e, kind)), None)

    again = (
        f"run the same command again; a failed download keeps no partial file, so {src.local_name} starts over "
        f"({dest_dir} is unchanged)"
    )
    mirror = "HF_ENDPOINT (environment, else configs/workspace.env)"
    if find(OfflineModeIsEnabled) is not None:
        return UserError(
            "HF_HUB_OFFLINE is set, so huggingface_hub refuses to download",
            hint="run the command without it: HF_HUB_OFFLINE=0 rwkv1c download ...",
        )
    if (http := find(HfHubHTTPError)) is not None and http.response is not None:
        code = http.response.status_code
        if code == 404:
            return UserError(
                f"not found (HTTP 404): {src.url}",
                hint=f"check the address (for a preset: CHECKPOINT/URL in configs/model/; repository {src.repo_id}, "
                f"revision {src.revision}, file {src.filename}) and that {mirror} serves this repository",
            )
        if code in (401, 403):
            return UserError(
                f"access refused (HTTP {code}): {src.url}",
                hint=f"the repository {src.repo_id} may not exist, or be gated or private: accept its terms on the "
                f"Hub and log in (`hf auth login`, or set HF_TOKEN); or the mirror refuses it: change {mirror}",
            )
        return UserError(
            f"download failed (HTTP {code}): {src.url}", hint=f"try again later, or set {mirror} to a mirror"
        )
    if (bad := find(HFValidationError)) is not None:
        return UserError(f"{src.repo_id!r} / {src.filename!r} is not a valid Hub file: {bad}", hint="check the URL")
    if (meta := find(FileMetadataError)) is not None:
        return UserError(
            f"{src.endpoint} does not answer like a Hugging Face Hub: {meta}",
            hint=f"{mirror} must be the Hub or a Hub mirror",
        )
    if any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in chain):
        return UserError(
            f"disk full while downloading {src.local_name} into {dest_dir}",
            hint="free some space there (or point MODELS_DIR in configs/workspace.env elsewhere); " + again,
        )
    if (net := find(httpx2.TransportError)) is not None:
        return UserError(
            f"download of {src.local_name} from {src.endpoint} failed: {_first_line(net)}",
            hint=f"check the network connection, or set {mirror} to a mirror; then " + again,
        )
    if (other := find(OSError)) is not None:
        return UserError(f"download of {src.local_name} failed: {_first_line(other)}", hint=again)
    return None


def _first_line(exc: BaseException) -> str:
    """The gist of an error: huggingface_hub appends advice meant for its own API (force_download=...)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _remove_staging(staging: Path) -> None:
    """Drop the per-file download folder (huggingface_hub's bookkeeping) and `.download/` once empty."""
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):  # other downloads are still in progress there, or it is already gone
        staging.parent.rmdir()


def verify(path: Path, size: int | None, sha256: str | None, digest: str, fix: str = "") -> None:
    """Check size and sha256 (when known) and report the sha256; a mismatch is a UserError with ``fix``."""
    got = path.stat().st_size
    problems = []
    if size is not None and got != size:
        problems.append(f"size {got} bytes, expected {size}")
    if sha256 and digest != sha256:
        problems.append(f"sha256 {digest}, expected {sha256}")
    if problems:
        raise UserError(f"{path.name} is not the expected file: " + "; ".join(problems), hint=fix or None)
    known = "as expected" if sha256 else "(no checksum known to compare with)"
    print(f"{path.name}: {got} bytes, sha256 {digest} {known}", file=sys.stderr)
