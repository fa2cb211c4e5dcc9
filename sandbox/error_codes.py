"""Every public error code in one table: HTTP status, client exception family, meaning.

The service's status of each code (``service/errors.py``), the OpenAPI document's error
list (``service/openapi.py``), the notebook client's exception classes
(``client.py``) and docs/errors.md are all read from here, so they cannot drift apart.
Tests walk every ``SandboxError`` subclass and every code raised in the sources and
require it to be listed here.

This module imports nothing from the sandbox: the notebook client imports it.

``status`` is the HTTP status the service answers with; ``api`` marks the codes of the
JSON API's contract (listed in the OpenAPI document and docs/service.md). Codes without a
status are never answered over HTTP as they are (command-line and server-side errors; the
service answers them as ``internal``, 500, or ``service.unavailable``, 503). A code
ending in ``.*`` stands for a family (``gate.*``: one code per gate rule, docs/gate.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    status: int | None
    description: str
    api: bool = False  # in the JSON API's contract (OpenAPI x-error-codes, docs/service.md)


def _api(status: int, description: str) -> Code:
    return Code(status, description, api=True)


# Code prefix -> the notebook client's exception class (sandbox.client). Codes of other
# prefixes never reach the client; if one did, it would raise SandboxServiceError.
FAMILIES: dict[str, str] = {
    "auth": "AuthError", "workspace": "WorkspaceRefused", "gate": "QueryRefused",
    "budget": "BudgetExhausted", "request": "RequestConflict", "limits": "LimitExceeded",
    "input": "InvalidRequest", "http": "InvalidRequest", "engine": "QueryFailed",
    "service": "ServiceUnavailable", "internal": "ServiceUnavailable",
    "export": "ExportRefused", "dummy": "ServiceUnavailable",
}
CLIENT_BASE = "SandboxServiceError"

CODES: dict[str, Code] = {
    # -- the JSON API (OpenAPI x-error-codes; the table of docs/service.md) --------------
    "gate.*": _api(400, "The gate refused the query (one code per rule, see docs/gate.md); "
                        "nothing was executed or charged. Carries line and column when known."),
    "input.invalid": _api(400, "Malformed JSON, an unknown field, a field of the wrong type or "
                               "out of range, text that is not valid Unicode, or nesting "
                               "deeper than 32 levels."),
    "auth.token_in_url": _api(400, "A token was sent in the URL; only the header is "
                                   "accepted."),
    "auth.required": _api(401, "No 'Authorization: token ...' header."),
    "auth.invalid": _api(401, "The token is unknown, expired or revoked."),
    "auth.scope": _api(403, "The token lacks the scope custom:sandbox:query."),
    "auth.not_a_user": _api(403, "The token belongs to a service, not a user."),
    "workspace.suspended": _api(403, "The operator suspended the workspace."),
    "workspace.expired": _api(403, "The workspace is past its last day of use."),
    "workspace.closed": _api(403, "The workspace is closed for good."),
    "budget.exhausted": _api(403, "The query costs more than the remaining budget (not "
                                  "charged)."),
    "workspace.not_found": _api(404, "No workspace of that name that the caller belongs to (a "
                                     "workspace of others is answered the same way)."),
    "export.invalid": _api(400, "An export item or field is malformed, or breaks the export "
                                "limits (count, size, type)."),
    "export.dummy": _api(400, "An export item comes from dummy data (a release id starting "
                              "with 'dummy-', or a frame labelled dummy); only real releases "
                              "leave."),
    "export.not_requester": _api(403, "Only the requester may do this to the export."),
    "export.self_approval": _api(403, "A reviewer can never decide on their own request."),
    "export.held": _api(403, "The member's export requests are held for review; contact the "
                             "auditors."),
    "limits.export_quota": _api(403, "The export would take the member over "
                                     "export_quota_bytes."),
    "export.not_found": _api(404, "No export of that id among the caller's."),
    "export.state": _api(409, "The export is not in a state that allows this."),
    "export.blocked": _api(409, "The automatic checks blocked the export."),
    "export.duplicate_approval": _api(409, "This reviewer already approved (two-person "
                                           "rule)."),
    "export.revoked": _api(410, "An auditor revoked the released export; it must not be "
                                "used."),
    "http.not_found": _api(404, "No such endpoint."),
    "http.method_not_allowed": _api(405, "The endpoint does not take this method."),
    "request.in_progress": _api(409, "A request with this id is still running."),
    "request.duplicate": _api(409, "The request id was already used and charged once."),
    "request.conflict": _api(409, "The request id was already used for a different query."),
    "request.failed": _api(409, "A request with this id failed or was interrupted; it was "
                                "charged once. Send a new request id."),
    "limits.body_too_large": _api(413, "The body (its Content-Length) exceeds max_body_bytes, "
                                       "or max_export_bytes for export submissions."),
    "limits.concurrency": _api(429, "The member already has per_member_concurrency requests "
                                    "in flight (Retry-After says when to retry)."),
    "limits.rate": _api(429, "The member spent a rate limit (queries_per_minute, "
                             "refusals_per_minute or exports_per_hour); Retry-After says when "
                             "to retry."),
    "internal": _api(500, "An unexpected error (logged for the operator; no details are "
                          "sent)."),
    "engine.error": _api(500, "Execution failed (charged); the engine's text is never sent."),
    "auth.unavailable": _api(502, "The hub could not be asked about the token."),
    "service.unavailable": _api(503, "The state database was busy or unwritable."),
    "dummy.unavailable": _api(503, "Dummy data cannot be made for this scenario; ask the "
                                   "operator."),
    "workspace.provisioning": _api(503, "The workspace is still being set up (hub not yet in "
                                        "step)."),
    "engine.timeout": _api(504, "The query ran past query_timeout_s and was stopped "
                                "(charged). Its family is engine.*."),
    # -- the auditor console (HTML pages; docs/console.md) ---------------------------------
    "auth.xsrf": Code(403, "Console: the form's XSRF token is missing or wrong."),
    "console.unavailable": Code(503, "Console: the page cannot be shown now (the hub or the "
                                      "state database did not answer)."),
    "http.error": Code(None, "Another HTTP error (its status as the server set it)."),
    # -- the notebook client, before or instead of an answer --------------------------------
    "service.error": Code(None, "Client: the base class default; every raised error carries "
                                "a more precise code."),
    "service.unreachable": Code(None, "Client: the service did not answer (after retries)."),
    "service.bad_response": Code(None, "Client: an HTTP error without a JSON error body."),
    "service.not_configured": Code(None, "Client: no SANDBOX_SERVICE_URL and no hub API URL "
                                         "to derive it from."),
    "workspace.choose": Code(None, "Client: the caller has several workspaces (or none); "
                                   "name one."),
    "workspace.forbidden": Code(None, "The caller is not a member of the workspace (the "
                                      "service answers workspace.not_found instead)."),
    # -- server-side and command-line errors (never sent as they are) ----------------------
    "sandbox.error": Code(None, "Base of every sandbox error; raised as such for problems "
                                "without a more precise code."),
    "state.error": Code(None, "The state database was busy or unwritable (the service "
                              "answers service.unavailable, 503)."),
    "config.invalid": Code(None, "A configuration file is invalid (file:line named)."),
    "spec.invalid": Code(None, "A dataset spec is invalid; every problem is listed."),
    "ingest.failed": Code(None, "A dataset could not be ingested."),
    "ingest.malformed_row": Code(None, "A source row is malformed."),
    "ingest.type_mismatch": Code(None, "A source value does not have its column's type."),
    "ingest.empty_unit": Code(None, "Source rows have no privacy unit value (empty or null); "
                                    "they would all count as one unit."),
    "input.confirmation_required": Code(None, "A destructive command was not confirmed (no "
                                              "terminal to ask on: pass --yes)."),
    "keys.error": Code(None, "The key store failed."),
    "keys.not_initialised": Code(None, "No key store at the configured path."),
    "keys.not_found": Code(None, "A key is not in the key store."),
    "keys.destroyed": Code(None, "A key was destroyed (its data can no longer be read)."),
    "keys.in_use": Code(None, "A master key still wraps keys in use (data keys, the "
                              "identifier index key); rotate before destroying it."),
    "keys.unwrap_failed": Code(None, "A data key could not be unwrapped (wrong master key or "
                                     "altered catalog)."),
    "vault.error": Code(None, "The encrypted vault failed."),
    "vault.integrity": Code(None, "A vault file does not match its recorded digest."),
    "vault.verify_failed": Code(None, "`dataset verify` found damaged, missing or unreadable "
                                      "files (each one named)."),
    "catalog.error": Code(None, "The catalog failed."),
    "catalog.not_found": Code(None, "No dataset (version) of that name in the catalog."),
    "catalog.corrupt": Code(None, "The catalog database is damaged."),
    "audit.failed": Code(None, "The audit log does not verify (records edited, removed, "
                               "inserted or reordered)."),
    "audit.proof_invalid": Code(None, "An inclusion proof does not prove its record."),
    "dp.error": Code(None, "A differential privacy computation failed."),
    "dp.invalid_parameter": Code(None, "A mechanism parameter is out of range."),
    "dp.mechanism_mismatch": Code(None, "A release was made with another mechanism than "
                                        "expected."),
    "policy.invalid": Code(None, "A scenario policy is invalid (file:line named)."),
    "scenario.error": Code(None, "A scenario operation is not possible in its state."),
    "scenario.grading": Code(None, "The grades of the columns a policy exposes do not allow "
                                   "it: a core column not accepted by name, or a floor of the "
                                   "grade not met (docs/workspaces.md)."),
    "scenario.not_found": Code(None, "No scenario (version) of that id."),
    "workspace.error": Code(None, "A workspace operation is not possible (operators' "
                                  "commands)."),
    "ledger.error": Code(None, "A ledger operation is not possible: an unknown ledger, a "
                               "provisioned workspace's ledger asked from the command line, or "
                               "a closed workspace's frozen ledger."),
    "workspace.unknown_member": Code(None, "A budget change names someone who is not a member "
                                           "of the workspace (operators' commands)."),
    "workspace.policy_mismatch": Code(None, "A command-line query would charge a reviewed "
                                            "scenario's ledger under a policy text that was "
                                            "never reviewed."),
    "hub.error": Code(None, "The hub refused or failed a mirroring step."),
    "auth.operator_required": Code(None, "The command needs a hub token with the operator's "
                                         "(or auditor's) role."),
    "export.error": Code(None, "Base of the export errors."),
    "export.index": Code(None, "The identifier index is missing or stale (an operator's "
                               "problem; the service answers internal)."),
    "export.bundle_invalid": Code(None, "An export bundle does not verify."),
}


def lookup(code: str) -> Code | None:
    """The entry of a code: its own, else its family's (``gate.too_large`` -> ``gate.*``)."""
    if code in CODES:
        return CODES[code]
    return CODES.get(code.split(".", 1)[0] + ".*")


def family(code: str) -> str:
    """The name of the client exception class a code raises in a notebook."""
    return FAMILIES.get(code.split(".", 1)[0], CLIENT_BASE)


def statuses() -> dict[str, int]:
    """Code -> HTTP status of every code (and family) the service answers with a status."""
    return {c: e.status for c, e in CODES.items() if e.status is not None}


def markdown() -> str:
    """docs/errors.md, made from ``CODES`` (a test keeps the two equal)."""
    lines = [
        "# Error codes",
        "",
        "Every error the sandbox raises on purpose carries a stable code. This page is made",
        "from `sandbox/error_codes.py` (`python -m sandbox.error_codes > docs/errors.md`); a",
        "test fails when the two differ, or when an error class or a raised code is missing.",
        "",
        "*status*: the HTTP status the service answers with (none: never sent as such);",
        "*API*: part of the JSON API's contract (OpenAPI `x-error-codes`,",
        "[service.md](service.md#errors)); *client*: the exception `sandbox.client` raises.",
        "",
        "| code | status | API | client | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for code, e in CODES.items():
        cls = FAMILIES.get(code.split(".", 1)[0])
        lines.append(f"| `{code}` | {e.status or ''} | {'yes' if e.api else ''} | "
                     f"{f'`{cls}`' if cls else ''} | {e.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(markdown(), end="")
