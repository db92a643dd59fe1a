"""MONAI Label's FastAPI app, hardened (``--uvicorn_app`` target).

What changes against stock MONAI Label, and why:

* **Inference off the event loop.** Stock ``POST /infer/{model}`` runs the model inside an
  ``async`` handler, so the server stops answering (``/info`` included) for a whole
  translation. Here a request waits for one of ``LOCALDIFFUSION_LABEL_WORKERS`` worker
  threads (default 1: one translation already uses every core); at most
  ``LOCALDIFFUSION_LABEL_QUEUE`` requests (default 16) are admitted at once, more get 503
  with ``Retry-After``.
* **Images only from the datastore.** ``image=`` must be an image id of the server's
  ``--studies`` datastore; stock MONAI Label accepted any path on the server and its error
  told the client whether a file existed. Unknown ids get 404 naming the id.
* **Nothing left behind.** Uploads go to a private temporary folder removed whatever the
  outcome (stock removes them only after a successful answer); the result file is removed
  after it is sent.
* **Client errors as 4xx.** A user fault found by the core (:class:`~localdiffusion.errors.InputError`,
  and only that) -> 400, malformed ``params`` (not a JSON object) -> 400, an unknown model
  -> 404, no image -> 400, each with the message as ``detail``; any other exception stays a
  500 with its traceback in the server log.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from fastapi import BackgroundTasks, File, Form, Request, UploadFile
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from monailabel.app import app
from monailabel.endpoints.infer import ResultType, send_response
from monailabel.interfaces.exception import MONAILabelException
from monailabel.interfaces.utils.app import app_instance
from starlette.exceptions import HTTPException as StarletteHTTPException

from localdiffusion.errors import InputError
from localdiffusion.network.device import use_threads

NO_IMAGE = "Neither Image nor File"
WORKERS = max(1, int(os.environ.get("LOCALDIFFUSION_LABEL_WORKERS", "1")))
QUEUE = max(WORKERS, int(os.environ.get("LOCALDIFFUSION_LABEL_QUEUE", "16")))
#: seconds a client told "busy" should wait (about one translation on a 2-core CPU)
RETRY_AFTER_S = 60


class _Admission:
    """At most ``limit`` requests inside the server's inference path at once."""

    def __init__(self, limit: int):
        self.limit, self.count, self.lock = limit, 0, threading.Lock()

    def enter(self) -> bool:
        with self.lock:
            if self.count >= self.limit:
                return False
            self.count += 1
            return True

    def leave(self) -> None:
        with self.lock:
            self.count -= 1


_EXECUTOR = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="localdiffusion-infer")
#: the worker threads share the server's cores instead of each taking all of them
THREADS = use_threads(int(os.environ.get("LOCALDIFFUSION_LABEL_THREADS", "0")), sharers=WORKERS)
_ADMISSION = _Admission(QUEUE)


def _answer(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


def _parse_params(params: str) -> dict:
    try:
        value = json.loads(params) if params else {}
    except json.JSONDecodeError as exc:
        raise InputError(f"parameter 'params' is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(value, dict):
        raise InputError(f"parameter 'params' must be a JSON object, got {type(value).__name__}")
    return value


def _datastore_image(image_id: str) -> str:
    """The path of datastore image ``image_id``; 404 for anything else (paths included)."""
    datastore = app_instance().datastore()
    if image_id not in set(datastore.list_images()):
        raise HTTPException(status_code=404, detail=f"image id {image_id!r} is not in this server's datastore")
    return datastore.get_image_uri(image_id)


async def infer(background_tasks: BackgroundTasks, model: str, image: str = "", session_id: str = "",
                params: str = Form("{}"), file: UploadFile = File(None), output: Optional[ResultType] = None):
    """``POST /infer/{model}``: as MONAI Label's, with the changes in the module docstring."""
    request = {"model": model, **_parse_params(params)}
    instance = app_instance()
    info = instance.info()
    if model not in info.get("models", {}):
        raise HTTPException(status_code=404, detail=f"no model {model!r} on this server")
    if not _ADMISSION.enter():
        return _answer(503, f"the server is busy ({QUEUE} requests in progress); retry later",
                       {"Retry-After": str(RETRY_AFTER_S)})
    upload_dir = Path(tempfile.mkdtemp(prefix="ld_upload_"))
    try:
        if file:
            name = Path(file.filename or "image.nii.gz").name
            request["image"] = str(upload_dir / name)
            with open(request["image"], "wb") as buffer:
                shutil.copyfileobj(file.file, buffer)
        elif image:
            request["image"] = _datastore_image(image)
        elif session_id and instance.sessions().get_session(session_id):
            session = instance.sessions().get_session(session_id)
            request["image"], request["session"] = session.image, session.to_json()
        else:
            raise HTTPException(status_code=400, detail=f"{NO_IMAGE}: upload a file or name a datastore image id")
        request.update(info.get("config", {}).get("infer", {}))
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(_EXECUTOR, instance.infer, request)
        if result is None:
            raise HTTPException(status_code=500, detail="Failed to execute infer")
        return send_response(instance.datastore(), result, output, background_tasks)
    finally:
        shutil.rmtree(upload_dir, ignore_errors=True)
        _ADMISSION.leave()


async def _bad_input(_: Request, exc: Exception) -> JSONResponse:
    return _answer(400, str(exc))


async def _monailabel_error(_: Request, exc: MONAILabelException) -> JSONResponse:
    status = 404 if "no model" in exc.msg.lower() else 400 if exc.error.name == "INVALID_INPUT" else 500
    return _answer(status, exc.msg)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = str(exc.detail)
    status = 400 if exc.status_code == 500 and detail.startswith(NO_IMAGE) else exc.status_code
    return _answer(status, detail)


def _replace_infer_route() -> None:
    """Ours first: routes match in order, and FastAPI keeps MONAI Label's included routers as
    units (their routes cannot be removed one by one)."""
    app.add_api_route("/infer/{model}", infer, methods=["POST"], tags=["Infer"],
                      summary="Run inference (datastore ids or an upload; off the event loop)")
    app.router.routes.insert(0, app.router.routes.pop())


_replace_infer_route()
app.add_exception_handler(InputError, _bad_input)
app.add_exception_handler(MONAILabelException, _monailabel_error)
app.add_exception_handler(StarletteHTTPException, _http_error)
app.add_exception_handler(HTTPException, _http_error)

__all__ = ["app"]
