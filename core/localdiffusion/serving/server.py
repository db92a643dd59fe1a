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
* **Only the routes the app needs** (:data:`ROUTES`, one table): everything else stock MONAI Label serves
  (training, sessions, uploads to the datastore, image deletion, whole-slide and batch inference, logs,
  OHIF, the proxy, scoring) answers 404 before it is routed. The datastore is read-only; with
  ``LOCALDIFFUSION_LABEL_WRITABLE=1`` the label routes (:data:`WRITE_ROUTES`) open too, for images of the
  datastore only (an id, never a path).
* **Authentication on every route.** With MONAI Label's authentication on (``MONAI_LABEL_AUTH_ENABLE``),
  every route but the login and the API page needs a valid bearer token, the product's own inference
  route included (stock MONAI Label checks its own routes only): 401 otherwise.
* **A client that goes away stops its job.** The translation stops at its next slice batch when its
  client disconnects (:func:`~localdiffusion.serving.tasks.cancel`), instead of holding the only worker
  for a result nobody reads.
* **Client errors as 4xx.** A user fault found by the core (:class:`~localdiffusion.errors.InputError`,
  and only that) -> 400, malformed ``params`` (not a JSON object) -> 400, an unknown model
  -> 404, no image -> 400, each with the message as ``detail``; any other exception stays a
  500 with its traceback in the server log.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
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
from localdiffusion.serving import tasks

#: every route this server answers, as (method, path); ``{name}`` is one path segment. HEAD goes with GET.
ROUTES = (("GET", "/"), ("GET", "/favicon.ico"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/static/{file}"),
          ("GET", "/info/"), ("POST", "/infer/{model}"), ("GET", "/datastore/"), ("GET", "/datastore/image"),
          ("GET", "/datastore/image/info"), ("GET", "/datastore/label"), ("GET", "/datastore/label/info"),
          ("POST", "/activelearning/{strategy}"))
#: the routes that need no token when authentication is on: the login and the API page
PUBLIC_ROUTES = (("GET", "/"), ("GET", "/favicon.ico"), ("GET", "/docs"), ("GET", "/openapi.json"),
                 ("GET", "/static/{file}"), ("POST", "/auth/token"), ("GET", "/auth/"), ("GET", "/auth/token/valid"))
#: MONAI Label's login routes, there only when authentication is on
AUTH_ROUTES = (("POST", "/auth/token"), ("GET", "/auth/"), ("GET", "/auth/token/valid"))
#: the datastore writes an operator may open (``LOCALDIFFUSION_LABEL_WRITABLE=1``): labels of datastore images
WRITE_ROUTES = (("PUT", "/datastore/label"), ("PUT", "/datastore/image/info"), ("PUT", "/datastore/label/info"))
WRITABLE = os.environ.get("LOCALDIFFUSION_LABEL_WRITABLE", "") in ("1", "true", "yes")

NO_IMAGE = "Neither Image nor File"
WORKERS = max(1, int(os.environ.get("LOCALDIFFUSION_LABEL_WORKERS", "1")))
QUEUE = max(WORKERS, int(os.environ.get("LOCALDIFFUSION_LABEL_QUEUE", "16")))
#: seconds a client told "busy" should wait (about one translation on a 2-core CPU)
RETRY_AFTER_S = 60
#: how often a running request looks whether its client is still there (seconds)
DISCONNECT_POLL_S = 0.5


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


@functools.lru_cache(maxsize=None)
def _pattern(path: str) -> re.Pattern:
    """A route table path as a regular expression (compiled once per path: every request is matched)."""
    return re.compile("^" + re.sub(r"\\{[a-z_]+\\}", "[^/]+", re.escape(path.rstrip("/"))) + "/?$")


def route_table(auth: bool, writable: bool) -> list[tuple[str, str]]:
    """The (method, path) pairs this server answers with these settings."""
    return [*ROUTES, *(AUTH_ROUTES if auth else ()), *(WRITE_ROUTES if writable else ())]


def _matches(method: str, path: str, routes) -> bool:
    method = "GET" if method == "HEAD" else method
    return any(m == method and _pattern(p).match(path) for m, p in routes)


def _auth_enabled() -> bool:
    from monailabel.config import settings

    return bool(settings.MONAI_LABEL_AUTH_ENABLE)


#: the signature algorithms a realm's token may use (Keycloak signs with RS256 by default)
TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256")


def user_from_token(token: str):
    """The MONAI Label user of a bearer token, verified against the realm's public key (signature and expiry)
    and read with MONAI Label's claim settings. MONAI Label 0.8.5's own ``from_token`` calls ``jwt.decode``
    without ``algorithms``, which PyJWT 2 refuses for every token, so a valid token never gets through its
    routes; this replaces it (:data:`app`'s dependency override). ``jwt.InvalidTokenError`` if not valid."""
    import jwt
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import User, get_public_key

    key = get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    payload = jwt.decode(token, key, algorithms=list(TOKEN_ALGORITHMS),
                         options={"verify_signature": True, "verify_aud": False, "verify_exp": True})
    roles = payload
    for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
        roles = roles.get(part) if isinstance(roles, dict) else None
    return User(username=str(payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or ""),
                email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
                name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME), roles=list(roles or []))


async def _check_token(http: Request) -> JSONResponse | None:
    """None if the request carries a valid bearer token with the user role; else the 401/403 answer."""
    from jwt import InvalidTokenError
    from monailabel.config import settings

    header = http.headers.get("authorization", "")
    if not header.lower().startswith("bearer ") or not header[7:].strip():
        return _answer(401, "authentication required: send a bearer token", {"WWW-Authenticate": "Bearer"})
    try:
        user = await asyncio.get_running_loop().run_in_executor(None, user_from_token, header[7:].strip())
    except InvalidTokenError:
        return _answer(401, "the token is not valid", {"WWW-Authenticate": "Bearer"})
    except (OSError, ValueError, KeyError) as exc:  # the realm is down or answers without a key
        return _answer(503, f"the authentication realm {settings.MONAI_LABEL_AUTH_REALM_URI} cannot be read "
                            f"({exc.__class__.__name__}); retry later")
    if settings.MONAI_LABEL_AUTH_ROLE_USER not in user.roles:
        return _answer(403, f'role "{settings.MONAI_LABEL_AUTH_ROLE_USER}" is required')
    return None


class Guard:
    """Pure ASGI middleware (so that a handler still sees its client disconnect): before routing, only
    :func:`route_table`'s routes (404 otherwise), a token on each when authentication is on, and a datastore
    image id on every datastore write."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        http = Request(scope, receive)
        method, path = http.method, http.url.path
        auth = _auth_enabled()
        refused = None
        if method == "OPTIONS" or not _matches(method, path, route_table(auth, WRITABLE)):
            refused = _answer(404, f"{method} {path} is not served here")
        elif auth and not _matches(method, path, PUBLIC_ROUTES):
            refused = await _check_token(http)
        if refused is None and _matches(method, path, WRITE_ROUTES):
            image = http.query_params.get("image") or http.query_params.get("label") or ""
            if image not in set(app_instance().datastore().list_images()):
                refused = _answer(404, f"image id {image!r} is not in this server's datastore")
        if refused is not None:
            return await refused(scope, receive, send)
        return await self.inner(scope, receive, send)


async def infer(http: Request, background_tasks: BackgroundTasks, model: str, image: str = "",
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
        else:
            raise HTTPException(status_code=400, detail=f"{NO_IMAGE}: upload a file or name a datastore image id")
        request.update(info.get("config", {}).get("infer", {}))
        request["cancel_token"] = token = uuid.uuid4().hex
        job = asyncio.get_running_loop().run_in_executor(_EXECUTOR, instance.infer, request)
        while not job.done():  # a client that goes away cancels its job (the task checks between batches)
            await asyncio.wait({job}, timeout=DISCONNECT_POLL_S)
            if not job.done() and await http.is_disconnected():
                tasks.cancel(token)
                break
        try:
            result = await job
        finally:
            tasks.cancel(token, cancelled=False)
        if result is None:
            raise HTTPException(status_code=500, detail="Failed to execute infer")
        return send_response(instance.datastore(), result, output, background_tasks)
    finally:
        shutil.rmtree(upload_dir, ignore_errors=True)
        _ADMISSION.leave()


async def _bad_input(_: Request, exc: Exception) -> JSONResponse:
    return _answer(400, str(exc))


async def _cancelled(_: Request, exc: Exception) -> JSONResponse:
    return _answer(499, f"cancelled: {exc}")


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
async def _current_user(http: Request):
    """MONAI Label's ``get_current_user``, verified by :func:`user_from_token` (the guard has checked the token)."""
    from jwt import InvalidTokenError

    header = http.headers.get("authorization", "")
    try:
        return user_from_token(header[7:].strip())
    except InvalidTokenError:
        raise HTTPException(status_code=401, detail="the token is not valid",
                            headers={"WWW-Authenticate": "Bearer"}) from None


def _override_authentication() -> None:
    from monailabel.endpoints.user.auth import get_current_user

    if _auth_enabled():
        app.dependency_overrides[get_current_user] = _current_user


_override_authentication()
app.add_middleware(Guard)
app.add_exception_handler(InputError, _bad_input)
app.add_exception_handler(tasks.JobCancelled, _cancelled)
app.add_exception_handler(MONAILabelException, _monailabel_error)
app.add_exception_handler(StarletteHTTPException, _http_error)
app.add_exception_handler(HTTPException, _http_error)

__all__ = ["app"]
