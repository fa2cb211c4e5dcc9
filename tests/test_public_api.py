"""The public names of the modules others build on, pinned: adding or removing one is a
deliberate change of this file (as httpx pins its ``__all__``)."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "sandbox.dp": {
        "KINDS", "Cost", "DPError", "InvalidParameterError", "Mechanism",
        "MechanismMismatchError", "compose", "plan_binned_quantile", "plan_gaussian",
        "plan_gaussian_joint", "plan_laplace", "plan_quantile", "plan_threshold",
        "quantile_rank_error", "quantile_scores", "release", "release_binned_quantile",
        "release_quantile", "release_threshold", "rho_to_epsilon", "split_epsilon",
        "zcdp_accounting",
    },
    "sandbox.client": {
        "AuthError", "BudgetExhausted", "ExportError", "ExportRefused", "InvalidRequest",
        "LimitExceeded", "QueryFailed", "QueryRefused", "RequestConflict", "Sandbox",
        "SandboxServiceError", "ServiceUnavailable", "WorkspaceError", "WorkspaceRefused",
        "render", "render_text",
    },
    "sandbox.exports": {
        "BundleInvalidError", "BundleReport", "CONFIDENTIAL_RULES", "CheckContext",
        "CheckReport", "DuplicateApprovalError", "EXPORT_KINDS", "ExportBlockedError",
        "ExportDummyError", "ExportError", "ExportHeldError", "ExportInputError", "ExportItem",
        "ExportNotFoundError", "ExportQuotaError", "ExportRequest", "ExportRevokedError",
        "ExportStateError", "ExportStore", "FileItem", "Fingerprint", "FrameItem",
        "IdentifierIndex", "IdentifierIndexError", "Limits", "NotRequesterError", "RULES",
        "RULES_VERSION", "ReleaseRecord", "RuleResult", "SelfApprovalError", "StateReleases",
        "build_index", "ensure_indexes", "gate_count_columns", "item_from_dict",
        "item_to_dict", "normalise", "run_checks", "state_context", "verify_bundle",
    },
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_are_pinned_and_exist(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == PUBLIC[module]
    assert len(mod.__all__) == len(set(mod.__all__))
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names {name}, which does not exist"
