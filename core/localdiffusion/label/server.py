"""MONAI Label's FastAPI app with client errors answered as 4xx (``--uvicorn_app`` target).

MONAI Label answers a request without an image and an unknown model with 500. Here: a user
fault found by the core (:class:`~localdiffusion.errors.InputError`, and only that) -> 400,
an unknown model -> 404, no image -> 400, each with the message as ``detail``; any other
exception stays a 500 with its traceback in the server log.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from monailabel.app import app
from monailabel.interfaces.exception import MONAILabelException
from starlette.exceptions import HTTPException as StarletteHTTPException

from localdiffusion.errors import InputError

NO_IMAGE = "Neither Image nor File"


def _answer(status: int, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


async def _bad_input(_: Request, exc: Exception) -> JSONResponse:
    return _answer(400, str(exc))


async def _monailabel_error(_: Request, exc: MONAILabelException) -> JSONResponse:
    status = 404 if "no model" in exc.msg.lower() else 400 if exc.error.name == "INVALID_INPUT" else 500
    return _answer(status, exc.msg)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = str(exc.detail)
    status = 400 if exc.status_code == 500 and detail.startswith(NO_IMAGE) else exc.status_code
    return _answer(status, detail)


app.add_exception_handler(InputError, _bad_input)
app.add_exception_handler(MONAILabelException, _monailabel_error)
app.add_exception_handler(StarletteHTTPException, _http_error)
app.add_exception_handler(HTTPException, _http_error)

__all__ = ["app"]
