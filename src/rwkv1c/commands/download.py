"""`rwkv1c download`: fetch an official RWKV-7 checkpoint into models/base/ and verify it (`rwkv1c.machine.hub`).

This is the only command that uses the network.
"""

from __future__ import annotations

import os
import sys

from rwkv1c.errors import UserError
from rwkv1c.machine.hub import fetch, hf_endpoint, resolve_source


def download(source: str, *, inspect: bool = True, retries: int = 3) -> None:
    """Download an official RWKV-7 checkpoint into models/base/, with resume, size and sha256 checks.

    SOURCE is a preset name (configs/model/*.env, e.g. rwkv7-1.5b) or an http(s) URL of a .pth file.
    Hugging Face URLs go through HF_ENDPOINT when it is set (environment, else configs/workspace.env), so
    a mirror works unchanged. An interrupted download resumes when the command is run again.

    Args:
        source: preset name or URL.
        inspect: describe the checkpoint (layers, width, parameters) once it is downloaded.
        retries: how many times to resume automatically after a dropped connection.
    """
    from rwkv1c.config import load_workspace, output_folder, workspace_root

    if retries < 0:
        raise UserError(f"--retries {retries}: must be 0 or more")
    root = workspace_root()
    ws = load_workspace(root)
    src = resolve_source(source, hf_endpoint(ws.hf_endpoint), root)
    dest_dir = output_folder(root, ws.models_dir).resolve()
    print(f"downloading {src.url}\n         to {dest_dir / src.filename}", file=sys.stderr)
    path = fetch(src, dest_dir, retries=retries)
    if inspect:
        from rwkv1c.model.inspect import describe, format_description

        try:
            info = describe(path)
        except UserError as exc:
            # keep the bytes (they may be large) but out of the way of commands that pick up models/base/*.pth
            rejected = path.with_name(path.name + ".rejected")
            os.replace(path, rejected)
            raise UserError(
                f"the downloaded file is not a usable RWKV-7 checkpoint: {exc}",
                hint=f"it was moved to {rejected}; check the URL (a .pth of an RWKV-7 x070 release)",
            ) from None
        print(path)
        print(format_description(info))
    else:
        print(path)
