"""The on-demand client's decision, state by state (the service tests cover it end to end)."""

from __future__ import annotations

import pytest

from ingestion import client
from ingestion.client import UploadError


def answers(monkeypatch, *states):
    """Make transfer_status answer ``states`` in turn (a state, or (state, reason), or an
    exception), recording each call's ``shares`` flag."""
    seen = []
    queue = list(states)

    def fake(transfer_id, urls, token, *, timeout=10, shares=True):
        seen.append(shares)
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        state, reason = item if isinstance(item, tuple) else (item, None)
        return {"state": state, **({"reason": reason} if reason else {})}

    monkeypatch.setattr(client, "transfer_status", fake)
    return seen


def decide(pickup_timeout=30.0):
    return client._await_verification("ab" * 16, ["http://svc"], "t", pickup_timeout, 0.001, None)


@pytest.mark.parametrize("final", ["validating", "cataloged", "quarantined"])
def test_no_spares_once_the_first_k_are_verified(monkeypatch, final):
    seen = answers(monkeypatch, "receiving", "reconstructing", "reconstructing", final)
    assert decide() == (False, final)
    assert seen and not any(seen)  # the state alone, never every receiver's progress


def test_spares_when_the_enclave_asks_for_them(monkeypatch):
    answers(monkeypatch, "reconstructing", ("receiving", "share-2: segment 0 corrupt"))
    assert decide() == (True, "receiving")


def test_spares_when_reconstruction_went_back_to_receiving_without_a_reason(monkeypatch):
    answers(monkeypatch, "reconstructing", "receiving")
    assert decide() == (True, "receiving")


def test_spares_when_the_enclave_does_not_start_in_time(monkeypatch):
    answers(monkeypatch, "receiving")
    assert decide(pickup_timeout=0.01) == (True, "receiving")


def test_no_spares_for_a_failed_transfer(monkeypatch):
    answers(monkeypatch, "reconstructing", ("failed", "internal error"))
    assert decide() == (False, "failed")


def test_spares_when_the_state_cannot_be_seen(monkeypatch):
    answers(monkeypatch, "reconstructing", UploadError("cannot reach ingestion endpoint"))
    assert decide() == (True, None)
