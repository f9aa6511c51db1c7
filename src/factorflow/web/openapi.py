"""The OpenAPI description of the service's own HTTP endpoints (served at /openapi.json and
used by the property-based tests that fuzz them)."""

from __future__ import annotations

from typing import Any

from factorflow import __version__

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _hook_operations(org: str) -> dict[str, Any]:
    security: list[dict[str, list[str]]] = [{f"hook_{org}": []}]
    return {
        "get": {
            "operationId": f"verify_{org}",
            "summary": f"Okta's one-time verification request (org {org})",
            "security": security,
            "parameters": [{
                "name": "X-Okta-Verification-Challenge", "in": "header", "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": 1024},
            }],
            "responses": {
                "200": {"description": "the challenge, echoed", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["verification"],
                               "properties": {"verification": {"type": "string"}}}}}},
                "400": _error("no challenge header"),
                "401": _error("missing or wrong credential"),
            },
        },
        "post": {
            "operationId": f"deliver_{org}",
            "summary": f"An event hook delivery (org {org})",
            "security": security,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Delivery"}}}},
            "responses": {
                "204": {"description": "stored (new, duplicate or quarantined events)",
                        "headers": {"factorflow-result": {"schema": {"type": "string"}}}},
                "400": _error("not JSON, or not an event hook delivery"),
                "401": _error("missing or wrong credential"),
                "408": _error("the body did not arrive in time"),
                "413": _error("body over the configured limit"),
                "415": _error("content type is not application/json, or the body is compressed"),
                "503": _error("the store could not commit; retry"),
            },
        },
    }


def openapi_document(hooks: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """``hooks``: path -> (org, auth header name)."""
    paths: dict[str, Any] = {
        path: _hook_operations(org) for path, (org, _header) in sorted(hooks.items())
    }
    paths["/healthz"] = {"get": {"operationId": "healthz", "summary": "process alive",
                                 "responses": {"200": {"description": "alive"}}}}
    paths["/readyz"] = {"get": {
        "operationId": "readyz", "summary": "store writable, migrations current, workers up",
        "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
    }}
    paths["/metrics"] = {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text exposition"}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "factorflow", "version": __version__,
                 "description": "Okta Event Hook receiver"},
        "paths": paths,
        "components": {
            "securitySchemes": {
                f"hook_{org}": {"type": "apiKey", "in": "header", "name": header}
                for org, header in hooks.values()
            },
            "schemas": {
                "Error": _ERROR,
                "Delivery": {
                    "type": "object",
                    "required": ["eventType", "data"],
                    "properties": {
                        "eventType": {"type": "string", "enum": ["com.okta.event_hook"]},
                        "eventId": {"type": "string"},
                        "eventTime": {"type": "string"},
                        "source": {"type": "string"},
                        "data": {"type": "object", "required": ["events"], "properties": {
                            "events": {"type": "array", "items": {"type": "object"}}}},
                    },
                },
            },
        },
    }
