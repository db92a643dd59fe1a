"""A minimal MONAI Label client on the standard library (no torch, no requests on the Slicer side).

``POST /infer/<model>?output=all`` with the image as multipart form data and the model's
parameters as JSON; the answer is multipart too: the result image and the result JSON.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path


def encode_multipart(fields: dict[str, str], files: dict[str, Path]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, path in files.items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{Path(path).name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")
        parts.append(head.encode() + Path(path).read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def decode_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Part name -> (file name or None, bytes) of a multipart answer."""
    message = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body,
                                       policy=email.policy.HTTP)
    if not message.is_multipart():
        raise ValueError(f"expected a multipart answer, got {content_type!r}")
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[name] = (part.get_filename(), part.get_payload(decode=True))
    return parts


#: a NIfTI-1 file holds at least its 348-byte header (the magic at bytes 344-347)
NIFTI_HEADER_BYTES = 348


def infer(server: str, model: str, image: Path, params: dict, out_dir: Path,
          timeout: float = 3600.0, token: str = "") -> tuple[Path, dict]:
    """Run ``model`` on ``image``; returns (result image written into ``out_dir``, result JSON).

    ``token``: the access token of a server that requires authentication (MONAI Label's
    ``/auth/token``), sent as ``Authorization: Bearer``. Errors name the problem: an
    unreachable server, a missing or rejected token, the server's own message for a bad
    request (HTTP 4xx/5xx), or an answer without an image.
    """
    url = f"{server.rstrip('/')}/infer/{urllib.parse.quote(model)}?output=all"
    body, content_type = encode_multipart({"params": json.dumps(params)}, {"file": Path(image)})
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            parts = decode_multipart(answer.read(), answer.headers.get("Content-Type", ""))
    except (TimeoutError, socket.timeout):
        raise RuntimeError(f"MONAI Label server {server} did not answer within {timeout:g} s") from None
    except ValueError as exc:  # not a multipart answer
        raise RuntimeError(f"MONAI Label server {server} sent an answer that is not an image and its "
                           f"parameters ({exc})") from None
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("detail", detail)
        except (ValueError, AttributeError):
            pass
        if exc.code in (401, 403):
            need = "rejected the token" if token else "requires authentication: enter its access token"
            raise RuntimeError(f"MONAI Label server {server} {need} (HTTP {exc.code}: {detail})") from None
        raise RuntimeError(f"MONAI Label server {server} answered {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise RuntimeError(f"MONAI Label server {server} is not reachable: {exc.reason}") from None
    images = [(filename, data) for name, (filename, data) in parts.items() if name != "params" and data]
    if not images:
        raise RuntimeError(f"MONAI Label server {server} returned no image for {model}")
    filename, data = images[0]
    gzipped = data[:2] == b"\x1f\x8b"
    if not gzipped and (len(data) < NIFTI_HEADER_BYTES or data[344:348] not in (b"n+1\0", b"ni1\0")):
        raise RuntimeError(f"MONAI Label server {server} returned {len(data)} bytes for {model} that are not a "
                           f"NIfTI image")
    try:
        params = json.loads(parts.get("params", (None, b"{}"))[1] or b"{}")
    except ValueError:
        raise RuntimeError(f"MONAI Label server {server} returned parameters that are not JSON") from None
    result = Path(out_dir) / f"result_{model}{'.nii.gz' if gzipped else '.nii'}"
    result.write_bytes(data)
    return result, params
