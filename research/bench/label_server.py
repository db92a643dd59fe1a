"""Start the MONAI Label app on 127.0.0.1 in a child process (tests and benchmarks).

The README's command, as a context manager: ``monailabel start_server --app
monai_bundle/monailabel_app --uvicorn_app localdiffusion.serving.server:app`` on a free port,
waited for until ``/info/`` answers, stopped (with its process group) on exit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from localdiffusion.shipped import LABEL_APP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_server(studies: str | Path, log: str | Path, *, models_root: str | Path | None = None,
                 threads: int | None = None, timeout: float = 120.0, env: dict | None = None,
                 process: dict | None = None) -> Iterator[str]:
    """Yield the URL of a running server; ``RuntimeError`` (with the log's tail) if it
    exits early or does not answer within ``timeout`` seconds. ``env``: extra environment
    variables (e.g. ``TMPDIR``, ``LOCALDIFFUSION_LABEL_QUEUE``); ``process``, if given, receives
    the server's ``pid``."""
    import requests

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    port = free_port()
    cmd = [shutil.which("monailabel", path=env["PATH"]), "start_server", "--app", str(LABEL_APP), "--studies",
           str(studies), "--host", "127.0.0.1", "--port", str(port), "--uvicorn_app", "localdiffusion.serving.server:app"]
    if models_root is not None:
        cmd += ["--conf", "models_root", str(models_root)]
    Path(studies).mkdir(parents=True, exist_ok=True)
    log = Path(log)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    if process is not None:
        process["pid"] = proc.pid
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"MONAI Label server exited early:\n{log.read_text(encoding='utf-8')[-3000:]}")
            try:
                if requests.get(f"{url}/info/", timeout=2).status_code in (200, 401):  # 401: authentication on
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"MONAI Label server did not answer /info/ in {timeout:.0f} s:\n"
                                   f"{log.read_text(encoding='utf-8')[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
