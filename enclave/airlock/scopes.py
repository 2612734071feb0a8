"""The airlock's hub scopes (``custom:airlock:*``), without importing the web service."""

from __future__ import annotations

SERVICE_NAME = "airlock"
ACCESS = f"access:services!service={SERVICE_NAME}"
SUBMIT = "custom:airlock:submit"
REVIEW = "custom:airlock:review"
OVERSEE = "custom:airlock:oversee"
TRANSPARENCY = "custom:airlock:transparency"
AIRLOCK_SCOPES = {
    SUBMIT: "Submit results for export review; download one's own releases.",
    REVIEW: "Review export requests and vote on them.",
    OVERSEE: "See every export request (without voting).",
    TRANSPARENCY: "See where one's own datasets went (provider transparency).",
}
#: The group whose members review export requests.
REVIEWERS_GROUP = "reviewers"
#: A provider's people are in ``provider-NAME`` (NAME as registered with `enclave providers`).
PROVIDER_GROUP_PREFIX = "provider-"
