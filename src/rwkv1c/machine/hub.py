"""Fetching an official RWKV-7 checkpoint into models/base/, resumably, and verifying it (`rwkv1c download`).

The file grows as `models/base/<name>.part`; an interrupted download continues from where it stopped
(HTTP Range). When it is complete its size and sha256 are checked against the preset
(configs/model/*.env: SIZE_BYTES, SHA256) and it is renamed to its final name in one step, so a file
with the final name is always whole. Hugging Face mirrors work through HF_ENDPOINT (environment
variable, else configs/workspace.env).

This is the only command that uses the network.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

from rwkv1c.errors import UserError

HF_HOST = "https://huggingface.co"
DEFAULT_REPO = "BlinkDL/rwkv-7-world"
CHUNK = 1 << 20
USER_AGENT = "rwkv1c-download/0.1"


@dataclass(frozen=True)
class Source:
    """What to fetch and what it must be."""

    url: str
    filename: str
    size: int | None = None
    sha256: str | None = None


def hf_endpoint(configured: str | None = None) -> str:
    """HF_ENDPOINT from the environment, else the workspace setting, else huggingface.co (no trailing /)."""
    value = os.environ.get("HF_ENDPOINT") or configured or HF_HOST
    return value.rstrip("/")


def with_endpoint(url: str, endpoint: str) -> str:
    """Point a huggingface.co URL at a mirror; other URLs are left alone."""
    if endpoint != HF_HOST and url.startswith(HF_HOST + "/"):
        return endpoint + url[len(HF_HOST) :]
    return url


def resolve_source(source: str, endpoint: str, root: Path | None = None) -> Source:
    """A preset name (configs/model/<name>.env) or an http(s) URL."""
    if re.match(r"^https?://", source):
        name = urllib.parse.unquote(urllib.parse.urlparse(source).path.rsplit("/", 1)[-1])
        if not name:
            raise UserError(f"cannot tell the file name from {source!r}", hint="give a URL that ends in the file name")
        return Source(with_endpoint(source, endpoint), name)
    from rwkv1c.config import load_preset

    preset = load_preset(source, root)
    if not preset.checkpoint and not preset.url:
        raise UserError(
            f"preset {preset.name} names no checkpoint to download",
            hint=f"set CHECKPOINT (and URL) in configs/model/{preset.name}.env, or give the URL directly",
        )
    url = preset.url or f"{HF_HOST}/{DEFAULT_REPO}/resolve/main/{urllib.parse.quote(preset.checkpoint)}"
    filename = preset.checkpoint or urllib.parse.unquote(url.rsplit("/", 1)[-1])
    return Source(with_endpoint(url, endpoint), filename, preset.size_bytes or None, preset.sha256.lower() or None)


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) of a `Content-Range: bytes a-b/total` (or `bytes */total`) header."""
    if not header:
        return None, None
    match = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", header.strip())
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _open(url: str, offset: int, timeout: float):  # type: ignore[no-untyped-def]
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=timeout)


def _http_error(url: str, exc: urllib.error.HTTPError) -> UserError:
    if exc.code == 404:
        return UserError(
            f"not found (HTTP 404): {url}",
            hint="check the preset's CHECKPOINT/URL in configs/model/ and that HF_ENDPOINT (if set) works",
        )
    if exc.code in (401, 403):
        return UserError(
            f"access refused (HTTP {exc.code}): {url}", hint="the file may be gated or the mirror refuses it"
        )
    return UserError(
        f"download failed (HTTP {exc.code} {exc.reason}): {url}", hint="try again later, or set HF_ENDPOINT to a mirror"
    )


def fetch(
    src: Source,
    dest_dir: Path,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``src`` into ``dest_dir`` (resuming a `.part`), check size and sha256, rename into place."""
    from rwkv1c.fsutil import sha256_file

    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / src.filename
    part = dest_dir / (src.filename + ".part")
    if final.exists():
        print(f"{final} already exists; checking it", file=sys.stderr)
        verify(final, src, sha256_file(final), fix=f"delete {final} and run the command again")
        return final
    total = src.size
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if total is not None and offset > total:
            print(f"{part} is larger than the file ({offset} > {total} bytes); starting again", file=sys.stderr)
            part.unlink()
            offset = 0
        if total is not None and offset == total:
            break
        try:
            try:
                resp = _open(src.url, offset, timeout)
            except urllib.error.HTTPError as exc:
                if exc.code == 416 and offset:  # nothing after `offset`: the .part may already be whole
                    _, reported = _content_range(exc.headers.get("Content-Range"))
                    if reported is not None and reported == offset:
                        total = reported
                        break
                    print(f"the server refused to resume {part.name}; starting again", file=sys.stderr)
                    part.unlink()
                    continue
                raise _http_error(src.url, exc) from None
            with resp:
                start, reported = _content_range(resp.headers.get("Content-Range"))
                length = resp.headers.get("Content-Length")
                if resp.status == 206 and start == offset:
                    mode = "ab"
                else:
                    if offset:
                        print(f"the server does not resume; downloading {src.filename} from the start", file=sys.stderr)
                    offset, mode = 0, "wb"
                    reported = int(length) if length and length.isdigit() else None
                if reported is not None:
                    if total is not None and reported != total:
                        raise UserError(
                            f"{src.url} is {reported} bytes but the preset expects {total}",
                            hint="the file changed upstream or the mirror serves another one; fix SIZE_BYTES/SHA256",
                        )
                    total = reported
                _copy(resp, part, mode, total, offset, src.filename, progress)
            got = part.stat().st_size
            if total is None or got == total:
                total = got
                break
            raise HTTPException(f"connection closed at {got} of {total} bytes")
        except (urllib.error.URLError, HTTPException, OSError, TimeoutError) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                raise _http_error(src.url, exc) from None
            attempt += 1
            have = part.stat().st_size if part.exists() else 0
            reason = getattr(exc, "reason", exc)
            if attempt > retries:
                raise UserError(
                    f"download of {src.filename} interrupted at {have} bytes: {reason}",
                    hint=f"run the same command again: it resumes from {part}",
                ) from None
            print(f"interrupted at {have} bytes ({reason}); resuming (try {attempt} of {retries})", file=sys.stderr)
    digest = sha256_file(part)
    try:
        verify(
            part,
            src,
            digest,
            fix="the partial file was removed; run the command again. If it repeats, the mirror serves another file",
        )
    except UserError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, final)
    return final


def _copy(resp: Any, part: Path, mode: str, total: int | None, offset: int, name: str, progress: bool) -> None:
    """Stream the response body into `part` (appending when resuming), with a progress bar."""
    from tqdm import tqdm

    with (
        open(part, mode) as out,
        tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
             file=sys.stderr, disable=not progress, leave=False) as bar,
    ):  # fmt: skip
        while block := resp.read(CHUNK):
            out.write(block)
            bar.update(len(block))


def verify(path: Path, src: Source, digest: str, fix: str = "") -> None:
    """Check size and sha256 against the preset (when it knows them); report the sha256 otherwise."""
    size = path.stat().st_size
    problems = []
    if src.size is not None and size != src.size:
        problems.append(f"size {size} bytes, expected {src.size}")
    if src.sha256 and digest != src.sha256:
        problems.append(f"sha256 {digest}, expected {src.sha256}")
    if problems:
        raise UserError(
            f"{path.name} is not the expected file: " + "; ".join(problems),
            hint=fix or None,
        )
    known = "matches the preset" if src.sha256 else "(no checksum in the preset to compare with)"
    print(f"{path.name}: {size} bytes, sha256 {digest} {known}", file=sys.stderr)
