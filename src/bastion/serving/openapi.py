"""The gateway's OpenAPI 3.0 document, written by hand (Starlette generates none).

``tests/test_serve_openapi.py`` keeps it equal to the routes of
:func:`bastion.serving.routes.build_routes` and fuzzes the server against it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from bastion.access.names import MAX_NAME_CHARS, MAX_VERSION_CHARS
from bastion.serving.http import AUTHZ_METHODS

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str, headers: dict | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


_RETRY = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}}
_CHALLENGE = {"WWW-Authenticate": {"description": "RFC 6750 Bearer challenge.", "schema": {"type": "string"}}}
_REQUEST_ID = {"X-Request-Id": {"description": "This request's id in the audit log.", "schema": {"type": "string"}}}

_REFUSALS = {
    "401": _json(_ERROR, "No bearer token, or a token the policy rejects (expired, forged, revoked, ...).",
                 {**_CHALLENGE, **_REQUEST_ID}),
    "403": _json(_ERROR, "A valid token whose scopes do not grant the action on this model.",
                 {**_CHALLENGE, **_REQUEST_ID}),
    "429": _json(_ERROR, "The caller's rate limit, or this address's failed-authentication limit, is used up.",
                 {**_RETRY, **_REQUEST_ID}),
    "503": _json(_ERROR, "Too many requests in flight, the audit log cannot be written, or the shared state "
                         "(rate limits, one-time jti) cannot answer.", _RETRY),
}
_MODEL_ERRORS = {
    "400": _json(_ERROR, "A malformed name or version, or a model that is not served (the reason says why)."),
    "404": _json(_ERROR, "No such model or version in the repository."),
}

_TENSOR_IN = {
    "type": "object", "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "description": "The model's input name (see its metadata): input."},
        "shape": {"type": "array", "items": {"type": "integer"}, "description": "[N, *input_shape]."},
        "datatype": {"type": "string", "enum": ["FP32", "UINT8"]},
        "data": {"type": "array", "description": "Row-major values, flat or nested as the shape.",
                 "items": {}},
        "parameters": {"type": "object", "description": "binary_data_size with the binary tensor extension."},
    },
}
_TENSOR_OUT = {
    "type": "object", "required": ["name", "shape", "datatype"],
    "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                   "datatype": {"type": "string"}, "data": {"type": "array", "items": {}},
                   "parameters": {"type": "object"}},
}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "Ready": {"type": "object", "required": ["ready"],
              "properties": {"ready": {"type": "boolean"}, "reason": {"type": "string"}}},
    "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"],
                       "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                      "extensions": {"type": "array", "items": {"type": "string"}}}},
    "TensorMetadata": {"type": "object", "required": ["name", "datatype", "shape"],
                       "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                                      "shape": {"type": "array", "items": {"type": "integer"}},
                                      "parameters": {"type": "object"}}},
    "ModelMetadata": {
        "type": "object", "required": ["name", "versions", "platform", "inputs", "outputs", "bastion"],
        "properties": {
            "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}},
            "bastion": {"type": "object", "required": ["ready"], "description":
                        "bastion's extension: model digest, signer key hint, the verified robustness summary, "
                        "detector and batching; or, for a model that is not served, why not.",
                        "properties": {"ready": {"type": "boolean"}, "reason": {"type": "string"},
                                       "model_digest": {"type": "string"}, "signer_key_hint": {"type": "string"},
                                       "robustness": {"type": "object", "nullable": True},
                                       "detector": {"type": "object", "nullable": True},
                                       "refusals": {"type": "array", "items": {"type": "object"}}}},
        },
    },
    "ModelReady": {"type": "object", "required": ["name", "ready"],
                   "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                  "ready": {"type": "boolean"}, "reason": {"type": "string"},
                                  "error": {"type": "string"}}},
    "InferRequest": {"type": "object", "required": ["inputs"],
                     "properties": {"id": {"type": "string"}, "parameters": {"type": "object"},
                                    "inputs": {"type": "array", "items": _TENSOR_IN},
                                    "outputs": {"type": "array", "items": {
                                        "type": "object", "required": ["name"],
                                        "properties": {"name": {"type": "string"},
                                                       "parameters": {"type": "object"}}}}}},
    "InferResponse": {"type": "object", "required": ["model_name", "outputs"],
                      "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                                     "id": {"type": "string"}, "parameters": {"type": "object"},
                                     "outputs": {"type": "array", "items": _TENSOR_OUT}}},
    "RepositoryIndex": {"type": "array", "items": {
        "type": "object", "required": ["name", "state"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                       "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
                       "reason": {"type": "string"}}}},
    "LoadResult": {"type": "object", "required": ["name"],
                   "properties": {"name": {"type": "string"}, "loaded": {"type": "array", "items": {"type": "string"}},
                                  "unloaded": {"type": "array", "items": {"type": "string"}}}},
    "AuthzAllowed": {"type": "object", "required": ["allowed"],
                     "properties": {"allowed": {"type": "boolean"}, "subject": {"type": "string", "nullable": True},
                                    "scope": {"type": "string", "nullable": True}}},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# The syntax of bastion.access.names, as JSON Schema patterns (the fuzz test holds them to it).
NAME_PATTERN = rf"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_CHARS - 1}}}$"
VERSION_PATTERN = rf"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_VERSION_CHARS - 1}}}$"
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": NAME_PATTERN},
         "description": "Model name."}
_VERSION = {"name": "version", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": VERSION_PATTERN}, "description": "Model version."}
_SECURED = [{"bearer": []}]


def _model_operations(params: list[dict]) -> dict[str, dict]:
    return {
        "": {"get": {"summary": "Model metadata (OIP), with bastion's verification block.", "security": _SECURED, "parameters": params,
                     "responses": {"200": _json(_ref("ModelMetadata"), "Metadata; a refused model says why."),
                                   **_MODEL_ERRORS, **_REFUSALS}}},
        "/ready": {"get": {"summary": "Whether the model (version) is served.", "security": _SECURED,
                           "parameters": params,
                           "responses": {"200": _json(_ref("ModelReady"), "Ready."),
                                         "400": _json({"anyOf": [_ref("ModelReady"), _ERROR]},
                                                      "Not ready (the reason says why), or a malformed name."),
                                         "404": _MODEL_ERRORS["404"], **_REFUSALS}}},
        "/infer": {"post": {
            "summary": "Inference (OIP JSON tensors, or Triton's binary tensor extension).", "security": _SECURED,
            "parameters": params,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("InferRequest")}}},
            "responses": {
                "200": {"description": "Outputs: logits, class (and detector_score, flagged with a detector).",
                        "content": {"application/json": {"schema": _ref("InferResponse")},
                                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "400": _json(_ERROR, "A malformed request; the error names the field."),
                "404": _MODEL_ERRORS["404"],
                "413": _json(_ERROR, "The body is larger than limits.max_body_bytes."),
                "415": _json(_ERROR, "Not JSON (nor the binary extension), or a compressed body."),
                "422": _json(_ERROR, "The detector (mode reject) flagged an input as adversarial."),
                **_REFUSALS}}},
    }


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": {"summary": "Liveness.", "responses": {"200": _json(_ref("Live"), "Alive.")}}},
        "/v2/health/ready": {"get": {"summary": "Readiness (false while shutting down, or while the audit log or the "
                                              "shared state it needs fails).", "responses": {
            "200": _json(_ref("Ready"), "Ready."), "503": _json(_ref("Ready"), "Not ready.")}}},
        "/v2": {"get": {"summary": "Server metadata.", "responses": {
            "200": _json(_ref("ServerMetadata"), "Name, version, extensions.")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics.", "responses": {"200": {
            "description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/v2/openapi.json": {"get": {"summary": "This document.", "responses": {"200": _json({"type": "object"},
                                                                                            "OpenAPI 3.0.")}}},
    }
    for prefix, params in (("/v2/models/{name}", [_NAME]), ("/v2/models/{name}/versions/{version}", [_NAME, _VERSION])):
        for suffix, operations in _model_operations(params).items():
            paths[prefix + suffix] = operations
    admin = {**_REFUSALS, "400": _json(_ERROR, "A malformed model name.")}
    paths["/v2/repository/index"] = {"post": {
        "summary": "Every model folder with its state and, if not served, the reason.", "security": _SECURED,
        "responses": {"200": _json(_ref("RepositoryIndex"), "The index."), **admin}}}
    paths["/v2/repository/models/{name}/load"] = {"post": {
        "summary": "Verify and (re)load a model from the repository; if it fails, the old version keeps serving.",
        "security": _SECURED, "parameters": [_NAME],
        "responses": {"200": _json(_ref("LoadResult"), "Loaded."),
                      "400": _json(_ERROR, "Refused (the reasons, and which old versions keep serving), or a "
                                           "malformed name."),
                      "404": _json(_ERROR, "No such model folder."), **_REFUSALS}}}
    paths["/v2/repository/models/{name}/unload"] = {"post": {
        "summary": "Stop serving a model (requests in flight finish).", "security": _SECURED,
        "parameters": [_NAME],
        "responses": {"200": _json(_ref("LoadResult"), "Unloaded."),
                      "404": _json(_ERROR, "No such model."), **admin}}}
    authz_responses = {
        "200": _json(_ref("AuthzAllowed"), "Allowed (or an open path); identity in X-Bastion-Subject, "
                                            "X-Bastion-Issuer, X-Bastion-Scope."),
        "401": _REFUSALS["401"], "403": _json(_ERROR, "Denied: scope, unknown path (or, under nginx, rate limited or "
                                                 "shared state down: see X-Bastion-Status)."),
        "429": _REFUSALS["429"], "503": _REFUSALS["503"]}
    forwarded = {"name": "path", "in": "path", "required": True, "description": "The forwarded request's path (Envoy).",
                 "schema": {"type": "string", "pattern": "^[^\\x00-\\x1f\\x7f]*$"}}
    for path, params in (("/authz", []), ("/authz/{path}", [forwarded])):
        responses = authz_responses if not params else {
            **authz_responses, "404": _json(_ERROR, "A forwarded path with control characters matches no route.")}
        paths[path] = {method.lower(): {
            "summary": "Authorization decision for nginx auth_request / Envoy ext_authz.",
            "description": "nginx: send X-Original-URI and X-Original-Method; Envoy: path_prefix /authz.",
            "security": [{"bearer": []}, {}], "parameters": params, "responses": responses}
            for method in AUTHZ_METHODS}
    for path, operations in paths.items():
        for method, operation in operations.items():
            operation["operationId"] = f"{method}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}"
    return {
        "openapi": "3.0.3",
        "info": {"title": "bastion serving gateway", "version": "1",
                 "description": "Open Inference Protocol v2 over signed, attested models, for authorized callers."},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }
