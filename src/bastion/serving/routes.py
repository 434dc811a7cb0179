"""The gateway's HTTP routes: Open Inference Protocol v2, its repository extension, and /authz.

Open: health, server metadata, ``/metrics``, the OpenAPI document. Everything under
``/v2/models`` needs a token granting ``predict`` on the model, everything under
``/v2/repository`` one granting ``admin``. A protected request is answered in this order,
cheapest first, and nothing is read from its body before the caller is authorized:
authentication and scope (401/403/429), model name (400), model (404/400), media type
(415), declared size (413), then the body (413 while streaming, 400 naming the bad field),
the detector (422), the answer. Every protected request writes one audit record and
counts in the metrics, whatever its outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib.metadata import PackageNotFoundError, version as package_version
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.access.names import model_name_problem, version_problem
from bastion.serving.auth import audit_fields
from bastion.serving.http import AUTHZ_METHODS, HttpError, error_response, json_response, new_request_id, one_line
from bastion.serving.inputs import BINARY_HEADER, check_media_type, encode_response, parse_infer_request
from bastion.serving.middleware import authz_decision
from bastion.serving.openapi import openapi_document
from bastion.serving.repository import PLATFORM

log = logging.getLogger("bastion.serve")


@dataclass
class _Labels:
    model: str = ""
    version: str = ""


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` (before reading, if declared)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise HttpError(400, "Content-Length: not a number")
        if int(declared) > limit:
            raise HttpError(413, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes "
                                 "(limits.max_body_bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body exceeds the limit of {limit} bytes (limits.max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def build_routes(gateway) -> list[Route]:
    repo, metrics, authorizer, audit = gateway.repository, gateway.metrics, gateway.authorizer, gateway.audit
    limits = gateway.limits

    async def guarded(request: Request, action: str, endpoint: str,
                      work: Callable[[_Labels], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        request_id = new_request_id()
        name = request.path_params.get("name")
        version = request.path_params.get("version")
        labels = _Labels()
        outcome = None
        error = None
        client = request.client.host if request.client else "unknown"
        try:
            if not audit.healthy:
                raise HttpError(503, f"{audit.error}: refusing requests that could not be audited")
            valid_name = name if name is not None and model_name_problem(name) is None else None
            outcome = await authorizer.authorize_async(request.headers.get("authorization"), client, action,
                                                       valid_name)
            if not outcome.allowed:
                metrics.count_refusal(outcome)
                raise HttpError(outcome.status, outcome.reason, outcome.headers)
            if name is not None and valid_name is None:
                raise HttpError(400, f"model name: {model_name_problem(name)}")
            if valid_name in repo.entries:  # a known name is a bounded label; an unknown one stays ""
                labels.model = valid_name
            if version is not None and version_problem(version):
                raise HttpError(400, f"model version: {version_problem(version)}")
            response = await work(labels)
        except HttpError as exc:
            error = exc.message
            response = error_response(exc.status, exc.message, exc.headers)
        except Exception:  # a bug: the caller gets a one-line 500, the log gets the traceback
            log.exception("request %s failed", request_id)
            error = "internal error"
            response = error_response(500, f"internal error (request {request_id}); see the server log")
        status = response.status_code
        seconds = time.perf_counter() - started
        record = {"request_id": request_id, "client": client, "action": action,
                  "model": name[:200] if name is not None else None, "version": labels.version or version,
                  "status": status, "latency_ms": round(seconds * 1000, 3)}
        if outcome is not None:
            record.update(audit_fields(outcome))
        else:
            record.update({"decision": "deny", "reason": "not authorized: the server could not decide"})
        if error is not None and outcome is not None and outcome.allowed:
            record["error"] = one_line(error, 300)  # allowed, then refused: say why
        audit.write(record)
        metrics.requests.labels(labels.model, labels.version, str(status)).inc()
        metrics.request_seconds.labels(endpoint).observe(seconds)
        response.headers["x-request-id"] = request_id
        return response

    # -- open --------------------------------------------------------------------------------
    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        if gateway.draining:
            return json_response({"ready": False, "reason": "shutting down"}, 503)
        if not audit.healthy:
            return json_response({"ready": False, "reason": audit.error}, 503)
        problem = await authorizer.off_loop(gateway.state.health)
        if problem is not None:
            if authorizer.needs_state:
                return json_response({"ready": False, "reason": f"{problem}: requests are refused until it answers"},
                                     503)
            return json_response({"ready": True, "reason": f"{problem}: rate limits are not enforced meanwhile "
                                                           "(state.on_error = \"open\")"})
        return json_response({"ready": True})

    async def server_metadata(request: Request) -> Response:
        try:
            current = package_version("bastion")
        except PackageNotFoundError:
            current = "unknown"
        return json_response({"name": "bastion", "version": current,
                              "extensions": ["model_repository", "binary_tensor_data", "bastion_model_trust",
                                             "bastion_authz"]})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def openapi(request: Request) -> Response:
        return json_response(openapi_document())

    # -- models ------------------------------------------------------------------------------
    async def model_metadata(request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")

        async def work(labels: _Labels) -> Response:
            entry = repo.entry(name)
            model = repo.resolve(name, version) if version is not None else entry.latest
            if model is None:
                return json_response({"name": name, "versions": [], "platform": PLATFORM, "inputs": [],
                                      "outputs": [], "bastion": {"ready": False, "reason": entry.why_not(),
                                                                 "refusals": [r.to_dict() for r in entry.refusals]}})
            labels.model, labels.version = model.name, model.version
            return json_response(model.metadata(repo.versions(name)))

        return await guarded(request, "predict", "metadata", work)

    async def model_ready(request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")

        async def work(labels: _Labels) -> Response:
            try:
                model = repo.resolve(name, version)
            except HttpError as exc:
                if exc.status != 400:
                    raise
                return json_response({"name": name, "ready": False, "reason": exc.message, "error": exc.message}, 400)
            labels.model, labels.version = model.name, model.version
            return json_response({"name": name, "version": model.version, "ready": True})

        return await guarded(request, "predict", "ready", work)

    async def infer(request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")

        async def work(labels: _Labels) -> Response:
            model = repo.resolve(name, version)
            labels.model, labels.version = model.name, model.version
            binary_length = request.headers.get(BINARY_HEADER)
            check_media_type(request.headers.get("content-type"), binary_length is not None)
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise HttpError(415, f"unsupported Content-Encoding {encoding[:40]!r}: send the body uncompressed")
            body = await read_body(request, limits.max_body_bytes)
            parsed = parse_infer_request(body, binary_length, model.spec)
            result = await model.batcher.submit(parsed.x)
            tensors = {"logits": result.logits, "class": result.logits.argmax(axis=1).astype("int64")}
            parameters = None
            detector = model.detector
            if detector is not None:
                flagged = result.scores > detector.threshold
                count = int(flagged.sum())
                if count:
                    model.flag_counter.inc(count)
                if detector.mode == "reject" and count:
                    worst = float(result.scores.max())
                    raise HttpError(422, f"{count} of {parsed.rows} input(s) flagged as adversarial by the "
                                         f"feature-squeezing detector (highest score {worst:.3f} > threshold "
                                         f"{detector.threshold:.3f}); refused")
                tensors["detector_score"], tensors["flagged"] = result.scores, flagged
                parameters = {"bastion_detector": detector.mode, "bastion_flagged": count}
            body, headers = encode_response(model=model.name, version=model.version, request=parsed, tensors=tensors,
                                            spec=model.spec, parameters=parameters)
            return Response(body, headers=headers)

        return await guarded(request, "predict", "infer", work)

    # -- repository --------------------------------------------------------------------------
    async def repository_index(request: Request) -> Response:
        async def work(labels: _Labels) -> Response:
            return json_response(repo.index())

        return await guarded(request, "admin", "repository", work)

    async def repository_load(request: Request) -> Response:
        name = request.path_params["name"]

        async def work(labels: _Labels) -> Response:
            report = await asyncio.to_thread(repo.load, name)
            if report.refused:
                kept = f"; still serving version(s) {', '.join(report.kept)}" if report.kept else ""
                reasons = "; ".join(r.reason if r.version is None else f"version {r.version}: {r.reason}"
                                    for r in report.refused)
                return json_response({"error": one_line(f"not loaded: {reasons}{kept}"), "name": name,
                                      "loaded": list(report.loaded), "kept": list(report.kept),
                                      "refused": [r.to_dict() for r in report.refused]}, 400)
            return json_response({"name": name, "loaded": list(report.loaded)})

        return await guarded(request, "admin", "repository", work)

    async def repository_unload(request: Request) -> Response:
        name = request.path_params["name"]

        async def work(labels: _Labels) -> Response:
            versions = await asyncio.to_thread(repo.unload, name)
            return json_response({"name": name, "unloaded": versions})

        return await guarded(request, "admin", "repository", work)

    # -- other gateways ----------------------------------------------------------------------
    async def authz(request: Request) -> Response:
        started = time.perf_counter()
        request_id = new_request_id()
        if not audit.healthy:
            return error_response(503, f"{audit.error}: refusing requests that could not be audited")
        outcome, headers, action, model = await authorizer.off_loop(
            authz_decision, authorizer, request.scope, dict(request.query_params), request.path_params.get("path", ""),
            request_id)
        if not outcome.allowed:
            metrics.count_refusal(outcome)
        seconds = time.perf_counter() - started
        audit.write({"request_id": request_id, "client": request.client.host if request.client else "unknown",
                     "action": action, "model": model, "version": None, "status": outcome.status,
                     "latency_ms": round(seconds * 1000, 3), "via": "authz", **audit_fields(outcome)})
        metrics.requests.labels("", "", str(outcome.status)).inc()
        metrics.request_seconds.labels("authz").observe(seconds)
        body = {"allowed": True, "subject": outcome.subject, "scope": outcome.scope} if outcome.allowed \
            else {"error": one_line(outcome.reason)}
        return json_response(body, outcome.status, headers)

    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/v2/openapi.json", openapi, methods=["GET"]),
    ]
    for suffix in ("", "/versions/{version}"):
        base = "/v2/models/{name}" + suffix
        routes += [Route(base, model_metadata, methods=["GET"]),
                   Route(base + "/ready", model_ready, methods=["GET"]),
                   Route(base + "/infer", infer, methods=["POST"])]
    routes += [
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", repository_unload, methods=["POST"]),
        Route("/authz", authz, methods=AUTHZ_METHODS),
        Route("/authz/{path:path}", authz, methods=AUTHZ_METHODS),
    ]
    return routes


def exception_handlers() -> dict:
    """Starlette's own refusals (no such route, wrong method) and any escaped error, as JSON one-liners."""

    async def http_error(request: Request, exc: HTTPException) -> Response:
        messages = {404: f"no such endpoint: {request.method} {request.url.path[:200]}",
                    405: f"method {request.method} is not allowed on {request.url.path[:200]}"}
        return error_response(exc.status_code, messages.get(exc.status_code, str(exc.detail)), exc.headers)

    async def internal(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal error; see the server log")

    return {HTTPException: http_error, Exception: internal}
