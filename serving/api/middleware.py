"""The outermost request layer (pure ASGI): request id, body size limit, access log, metrics, last-resort 500.

* ``X-Request-ID``: taken from the request when it is 1-64 characters of ``[A-Za-z0-9._-]``, else generated;
  echoed in the response and in every log line and error body of the request.
* Body limit: ``Content-Length`` over the limit is answered 413 before anything is read; a chunked body is
  counted while it is read and refused with 413 when it passes the limit. Job submissions
  (``/v1/jobs/...``) have their own, larger limit.
* An exception that escapes the app becomes ``500 {"error": "internal error", "request_id"}`` (the
  traceback goes to the server log only); a client that disconnected is logged, not answered.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.requests import ClientDisconnect

from serving.api.errors import ApiError
from serving.api.logs import request_id_var

log = logging.getLogger("serving.api.access")
_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContext:
    def __init__(self, app, *, metrics, max_body_bytes: int, max_job_body_bytes: int) -> None:
        self.app, self.metrics = app, metrics
        self.max_body, self.max_job_body = int(max_body_bytes), int(max_job_body_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")
        rid = rid if _RID.match(rid) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        t0 = time.perf_counter()
        path = scope.get("path", "")
        limit = self.max_job_body if path.startswith("/v1/jobs") else self.max_body
        st = {"status": 500, "started": False, "bytes_in": 0, "bytes_out": 0}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                st["status"], st["started"] = message["status"], True
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [(b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                st["bytes_out"] += len(message.get("body", b""))
            await send(message)

        async def receive_wrapper():
            message = await receive()
            if message["type"] == "http.request":
                st["bytes_in"] += len(message.get("body", b""))
                if st["bytes_in"] > limit:
                    raise ApiError(413, f"request body over the limit of {limit} bytes", field="body",
                                   expected=f"at most {limit} bytes", code="too_large")
            return message

        try:
            length = headers.get("content-length")
            if length is not None:
                if not length.strip().isdigit():
                    await self._error(send_wrapper, ApiError(400, "invalid Content-Length header", field="Content-Length",
                                                             expected="a non-negative integer", code="bad_request"))
                    return
                if int(length) > limit:
                    await self._error(send_wrapper, ApiError(413, f"request body of {int(length)} bytes is over the "
                                                                  f"limit of {limit} bytes", field="body",
                                                             expected=f"at most {limit} bytes", got=length,
                                                             code="too_large"))
                    return
            await self.app(scope, receive_wrapper, send_wrapper)
        except ClientDisconnect:
            st["status"] = 499
            log.info("client disconnected")
        except ApiError as exc:  # raised by receive_wrapper outside a route (e.g. while a form is parsed)
            if not st["started"]:
                await self._error(send_wrapper, exc)
        except Exception:  # last resort: never a stack trace to the client
            log.exception("unhandled error", extra={"method": scope.get("method"), "route": _route(scope)})
            if not st["started"]:
                await self._error(send_wrapper, ApiError(500, "internal error", code="internal_error"))
        finally:
            seconds = time.perf_counter() - t0
            route = _route(scope)
            state = scope.get("state") or {}
            code = state.get("error_code") if isinstance(state, dict) else None
            if self.metrics is not None:
                self.metrics.request(scope.get("method", ""), route, st["status"], seconds, code)
                if st["bytes_in"]:
                    self.metrics.received(route, st["bytes_in"])
            if not route.startswith("/health"):
                client = state.get("client") if isinstance(state, dict) else None
                log.info("request", extra={"method": scope.get("method"), "route": route, "status": st["status"],
                                           "duration_ms": round(seconds * 1000, 1), "bytes_in": st["bytes_in"],
                                           "bytes_out": st["bytes_out"], "client": client, "code": code})
            request_id_var.reset(token)

    @staticmethod
    async def _error(send, exc: ApiError) -> None:
        body = json.dumps(exc.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        if exc.status == 413:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _route(scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    return "unmatched"
