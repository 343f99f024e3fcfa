"""`rwkv1c download`: fetch an official RWKV-7 checkpoint from the Hub into models/base/ (`rwkv1c.machine.hub`).

This is the only command that uses the network.
"""

from __future__ import annotations

import os
import sys

from rwkv1c.errors import UserError
from rwkv1c.machine.hub import fetch, hf_endpoint, resolve_source


def download(source: str, *, inspect: bool = True) -> None:
    """Download an official RWKV-7 checkpoint from the Hugging Face Hub into models/base/ and verify it.

    SOURCE is a preset name (configs/model/*.env, e.g. rwkv7-1.5b) or the Hub address of a .pth file
    (https://huggingface.co/<owner>/<repo>/resolve/<revision>/<file>, or the same path on a mirror).
    huggingface.co goes through HF_ENDPOINT when it is set (environment, else configs/workspace.env), so a
    mirror works unchanged. A dropped connection is resumed within the run; the size and sha256 are
    checked before the file takes its final name.

    Args:
        source: preset name or Hub file URL.
        inspect: describe the checkpoint (layers, width, parameters) once it is downloaded.
    """
    from rwkv1c.config import load_workspace, output_folder, workspace_root

    root = workspace_root()
    ws = load_workspace(root)
    src = resolve_source(source, hf_endpoint(ws.hf_endpoint), root)
    dest_dir = output_folder(root, ws.models_dir).resolve()
    print(f"downloading {src.url}\n         to {dest_dir / src.local_name}", file=sys.stderr)
    path = fetch(src, dest_dir)
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
