"""The OpenAPI 3.1 document of the service (served at ``{prefix}api/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

from ..error_codes import CODES
from ..gate import EPSILON_CEILING, EPSILON_FLOOR

# The codes of the JSON API's contract (x-error-codes): (status, description), from the
# one table of codes.
ERROR_CODES: dict[str, tuple[int, str]] = {
    c: (e.status, e.description) for c, e in CODES.items() if e.api and e.status is not None}

_ERROR = {"$ref": "#/components/schemas/Error"}
_BUDGET = {"$ref": "#/components/schemas/Budget"}


def _errors(*statuses: int) -> dict[str, Any]:
    out = {}
    for status in statuses:
        codes = sorted(c for c, (s, _) in ERROR_CODES.items() if s == status)
        out[str(status)] = {"description": "Error: " + ", ".join(codes),
                            "content": {"application/json": {"schema": _ERROR}}}
    return out


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_WS_PARAM = [{"name": "workspace", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}}]
_SECURE = [{"hubToken": ["custom:sandbox:query"]}]
_EXPORT = {"$ref": "#/components/schemas/Export"}
_EXPORT_PARAMS = [*_WS_PARAM, {"name": "export_id", "in": "path", "required": True,
                               "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}]
_AUTH_ERRORS = (400, 401, 403, 404, 413, 429, 500, 502, 503)


# What a client can do next with the request it just made (OpenAPI links).
_EXPORT_LINKS = {name: {"operationId": op, "parameters": {
    "workspace": "$request.path.workspace", "export_id": "$response.body#/id"}}
    for name, op in (("GetExport", "getExport"), ("WithdrawExport", "withdrawExport"),
                     ("ResubmitExport", "resubmitExport"),
                     ("DownloadExport", "downloadExport"))}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def document(prefix: str, version: str) -> dict[str, Any]:
    base = prefix.rstrip("/") + "/api/v1"
    paths: dict[str, Any] = {
        "/health": {"get": {
            "summary": "Liveness (no authentication)", "operationId": "health", "security": [],
            "responses": {"200": _ok({"type": "object", "required": ["status", "version"],
                                      "properties": {"status": {"const": "ok"},
                                                     "version": {"type": "string"}}})}}},
        "/openapi.json": {"get": {
            "summary": "This document (no authentication)", "operationId": "openapi",
            "security": [], "responses": {"200": _ok({"type": "object"})}}},
        "/workspaces": {"get": {
            "summary": "The workspaces the caller is a member of",
            "operationId": "listWorkspaces", "security": _SECURE,
            "responses": {"200": _ok({"type": "array", "items": {
                "$ref": "#/components/schemas/WorkspaceSummary"}}),
                **_errors(400, 401, 403, 413, 429, 500, 502, 503)}}},
        "/workspaces/{workspace}/schema": {"get": {
            "summary": "Tables, columns, roles, bounds, joins and privacy defaults (no data)",
            "operationId": "schema", "security": _SECURE, "parameters": _WS_PARAM,
            "responses": {"200": _ok({"$ref": "#/components/schemas/Schema"}),
                          **_errors(*_AUTH_ERRORS)}}},
        "/workspaces/{workspace}/explain": {"post": {
            "summary": "What a query would do and cost; touches no data, spends nothing",
            "operationId": "explain", "security": _SECURE, "parameters": _WS_PARAM,
            "requestBody": _body({"$ref": "#/components/schemas/ExplainRequest"}),
            "responses": {"200": _ok({"$ref": "#/components/schemas/Explain"}),
                          **_errors(*_AUTH_ERRORS)}}},
        "/workspaces/{workspace}/query": {"post": {
            "summary": "Answer with differentially private noise, charging the caller once "
                       "per request id; with dummy: true, from dummy data, free",
            "operationId": "query", "security": _SECURE, "parameters": _WS_PARAM,
            "requestBody": _body({"$ref": "#/components/schemas/QueryRequest"}),
            "responses": {
                "200": {**_ok({"$ref": "#/components/schemas/Release"}),
                        "headers": {"Sandbox-Replayed": {
                            "description": "'true' when this is the stored answer of an "
                                           "earlier request with the same id (not charged "
                                           "again)", "schema": {"type": "string"}}}},
                **_errors(*_AUTH_ERRORS, 409, 504)}}},
        "/workspaces/{workspace}/budget": {"get": {
            "summary": "The caller's privacy budget in the workspace",
            "operationId": "budget", "security": _SECURE, "parameters": _WS_PARAM,
            "responses": {"200": _ok(_BUDGET), **_errors(*_AUTH_ERRORS)}}},
        "/workspaces/{workspace}/exports": {
            "get": {"summary": "The caller's export requests in the workspace",
                    "operationId": "listExports", "security": _SECURE,
                    "parameters": _WS_PARAM,
                    "responses": {"200": _ok({"type": "array", "items": _EXPORT}),
                                  **_errors(*_AUTH_ERRORS)}},
            "post": {"summary": "Ask to take frames or files out: checked at once, then "
                                "reviewed by an auditor (docs/exports.md)",
                     "operationId": "submitExport", "security": _SECURE,
                     "parameters": _WS_PARAM,
                     "requestBody": _body({"$ref": "#/components/schemas/ExportSubmit"}),
                     "responses": {"201": {**_ok(_EXPORT, "Created (state checked, or "
                                                          "rejected when the limits or types "
                                                          "rule blocks)"),
                                           "links": _EXPORT_LINKS},
                                   **_errors(*_AUTH_ERRORS, 409)}}},
        "/workspaces/{workspace}/exports/{export_id}": {"get": {
            "summary": "One of the caller's export requests: state, checks, decisions",
            "operationId": "getExport", "security": _SECURE, "parameters": _EXPORT_PARAMS,
            "responses": {"200": _ok(_EXPORT), **_errors(*_AUTH_ERRORS)}}},
        "/workspaces/{workspace}/exports/{export_id}/withdraw": {"post": {
            "summary": "Withdraw one's own request before it is released",
            "operationId": "withdrawExport", "security": _SECURE,
            "parameters": _EXPORT_PARAMS,
            "requestBody": _body({"$ref": "#/components/schemas/ExportWithdraw"}),
            "responses": {"200": _ok(_EXPORT), **_errors(*_AUTH_ERRORS, 409)}}},
        "/workspaces/{workspace}/exports/{export_id}/resubmit": {"post": {
            "summary": "A changed version of a request returned for changes (new revision, "
                       "checked again)", "operationId": "resubmitExport",
            "security": _SECURE, "parameters": _EXPORT_PARAMS,
            "requestBody": _body({"$ref": "#/components/schemas/ExportResubmit"}),
            "responses": {"200": _ok(_EXPORT), **_errors(*_AUTH_ERRORS, 409)}}},
        "/workspaces/{workspace}/exports/{export_id}/bundle": {"get": {
            "summary": "The signed bundle of a released export (each download is logged)",
            "operationId": "downloadExport", "security": _SECURE,
            "parameters": _EXPORT_PARAMS,
            "responses": {"200": {"description": "zip: files, manifest.json, manifest.sig",
                                  "content": {"application/zip": {"schema": {
                                      "type": "string", "format": "binary"}}}},
                          **_errors(*_AUTH_ERRORS, 409, 410)}}},
    }
    number_or_null = {"type": ["number", "null"]}
    epsilon = {"type": ["number", "null"], "minimum": EPSILON_FLOOR, "maximum": EPSILON_CEILING,
               "description": "null or absent: the scenario's default; at most the "
                              "scenario's epsilon_max"}
    request_id = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
    export_fields = {
        "title": {"type": "string"}, "purpose": {"type": "string"},
        "items": {"type": "array", "minItems": 1, "items": {"type": "object", "description":
                  "{kind: frame, name, columns, rows, release_ids, postprocessing} or "
                  "{kind: file, name, media_type, data_base64, release_ids}"}},
        "request_id": {"anyOf": [request_id, {"type": "null"}]}}
    schemas = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message", "hint"],
            "properties": {"code": {"type": "string",
                                    "description": "stable code, see x-error-codes"},
                           "message": {"type": "string"},
                           "hint": {"type": ["string", "null"]},
                           "line": {"type": "integer", "description": "gate refusals: "
                                    "the line of the refused part of the SQL (1-based)"},
                           "column": {"type": "integer", "description": "its column, in "
                                      "characters (1-based)"}}}}},
        "ExportSubmit": {"type": "object", "required": ["title", "purpose", "items"],
                         "additionalProperties": False, "properties": export_fields},
        "ExportResubmit": {"type": "object", "required": ["items"],
                           "additionalProperties": False, "description": "A new revision "
                           "of a request returned for changes (title and purpose stay "
                           "unless given)",
                           "properties": {k: v for k, v in export_fields.items()
                                          if k != "request_id"}},
        "ExportWithdraw": {"type": "object", "additionalProperties": False,
                           "properties": {"comment": {"type": ["string", "null"]}}},
        "Export": {"type": "object", "description": "An export request as its requester "
                   "sees it: nothing in it depends on whether a value is in the vault (the "
                   "identifier scan is shown to auditors only, docs/exports.md)",
                   "properties": {
            "id": {"type": "string"}, "workspace": {"type": "string"},
            "state": {"enum": ["submitted", "checked", "approved", "rejected", "returned",
                               "released", "withdrawn", "revoked"]},
            "checks": {"type": ["object", "null"]}, "items": {"type": "array"},
            "events": {"type": "array"}, "approvals_required": {"type": "integer"}}},
        "Budget": {"type": "object", "properties": {
            k: {"type": "number"} for k in ("epsilon_total", "epsilon_spent",
                                             "epsilon_remaining", "delta_total",
                                             "delta_spent", "delta_remaining")} | {
            "refreshes_on": {"type": ["string", "null"]},
            "accounting": {"enum": ["basic", "zcdp"]}, "epsilon_basic": {"type": "number"},
            "epsilon_zcdp": {"type": ["number", "null"]}}},
        "WorkspaceSummary": {"type": "object", "properties": {
            "name": {"type": "string"}, "policy": {"type": "string"},
            "title": {"type": "string"}, "purpose": {"type": "string"}, "budget": _BUDGET}},
        "Column": {"type": "object", "properties": {
            "name": {"type": "string"}, "type": {"type": "string"},
            "role": {"enum": ["dimension", "measure", "filter", "unit"]},
            "bounds": {"type": ["array", "null"], "items": {"type": "number"}},
            "keys": {"type": ["array", "null"]}, "description": {"type": "string"}}},
        "Schema": {"type": "object", "properties": {
            "workspace": {"type": "string"}, "policy": {"type": "string"},
            "title": {"type": "string"}, "purpose": {"type": "string"},
            "tables": {"type": "object", "additionalProperties": {
                "type": "object", "properties": {
                    "description": {"type": "string"}, "public": {"type": "boolean"},
                    "privacy_unit": {"type": ["string", "null"]},
                    "max_rows_per_unit": {"type": "integer"},
                    "columns": {"type": "array",
                                "items": {"$ref": "#/components/schemas/Column"}}}}},
            "joins": {"type": "array", "items": {"type": "object"}},
            "privacy": {"type": "object"}, "budget_default": {"type": "object"}}},
        "ExplainRequest": {"type": "object", "required": ["sql"],
                           "additionalProperties": False, "properties": {
                               "sql": {"type": "string"}, "epsilon": epsilon}},
        "QueryRequest": {"type": "object", "required": ["sql", "request_id"],
                         "additionalProperties": False, "properties": {
                             "sql": {"type": "string"}, "epsilon": epsilon,
                             "request_id": request_id,
                             "dummy": {"type": "boolean", "description": "true: answer "
                                       "from the scenario's dummy data (same checks, "
                                       "refusals, noise and shape; nothing charged, stored "
                                       "or exportable; the request id is not kept)"}}},
        "Explain": {"type": "object", "properties": {
            "rewritten_sql": {"type": "string"}, "postprocess_sql": {"type": "string"},
            "columns": {"type": "array", "items": {"type": "string"}},
            "cost": {"type": "object"}, "plan": {"type": "object"},
            "groups": {"type": "string"}, "accuracy": {"type": "object"},
            "bounding": {"type": "object"}}},
        "Release": {"type": "object", "properties": {
            "release_id": {"type": "string"}, "policy": {"type": "string"},
            "columns": {"type": "array", "items": {"type": "string"}},
            "rows": {"type": "array", "items": {"type": "array"}},
            "ci95": {"type": "array", "items": {"type": "array", "items": number_or_null},
                     "description": "95% half-width per cell (null: exact key or not given)"},
            "mechanisms": {"type": "object", "additionalProperties": {"type": "string"}},
            "epsilon": {"type": "number"}, "delta": {"type": "number"},
            "suppressed_groups": {"type": "integer", "minimum": 0, "description":
                                  "groups held back below the threshold (private keys): "
                                  "computed from a noisy count of all groups, so "
                                  "approximate; 0 and exact with public keys"},
            "suppressed_groups_ci95": {"type": ["number", "null"], "description":
                                       "95% half-width of the noisy group count behind "
                                       "suppressed_groups; null when nothing can be "
                                       "suppressed (public keys or no GROUP BY)"},
            "bounding": {"type": "object", "description":
                         "what contribution bounding did (docs/gate.md)", "properties": {
                             "rows_per_unit": {"type": "object", "additionalProperties": {
                                 "type": "integer"}, "description": "table -> the rows each "
                                 "unit keeps (at random, before WHERE)"},
                             "groups_per_unit": {"type": ["integer", "null"]},
                             "units_cut": {"type": ["integer", "null"], "description":
                                           "noisy count of the units that had a matching "
                                           "row left out by the row bound; null when no row "
                                           "bound above 1 applies"},
                             "units_cut_ci95": {"type": ["number", "null"]},
                             "note": {"type": "string"}}},
            "noisy": {"const": True},
            "replayed": {"type": "boolean", "description": "true: the stored answer of an "
                         "earlier identical request (same SQL, epsilon, policy and data), "
                         "not charged again; epsilon and delta are what it cost then"},
            "dummy": {"type": "boolean", "description": "true: answered from dummy data "
                      "(values drawn from the schema alone, describing no one); free, "
                      "and refused by the export airlock"},
            "budget": _BUDGET}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Data sandbox gate", "version": version,
                 "description": "Differentially private SQL over encrypted data. Every "
                                "error is {\"error\": {code, message, hint}}."},
        "servers": [{"url": base}],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"hubToken": {
            "type": "apiKey", "in": "header", "name": "Authorization",
            "description": "'token <JupyterHub API token>' with scope custom:sandbox:query"}}},
        "x-error-codes": {c: {"status": s, "description": d}
                          for c, (s, d) in ERROR_CODES.items()},
    }
