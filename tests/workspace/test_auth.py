"""The TOTP second factor: which codes count (no hub needed)."""

from __future__ import annotations

import onetimepass

from enclave.workspace.auth import TOTP_STEP_SECONDS, totp_accepted

SECRET = "JBSWY3DPEHPK3PXP"
NOW = 1_790_000_015  # 15 s into a step


def code_at(clock: float) -> str:
    return str(onetimepass.get_totp(SECRET, clock=int(clock))).zfill(6)


def test_the_current_code_counts():
    assert totp_accepted(code_at(NOW), SECRET, NOW)


def test_a_code_typed_as_its_step_ended_still_counts():
    typed = code_at(NOW - TOTP_STEP_SECONDS)
    assert typed != code_at(NOW)
    assert totp_accepted(typed, SECRET, NOW)
    assert totp_accepted(f" {typed} ", SECRET, NOW)


def test_older_future_and_malformed_codes_are_refused():
    accepted = {code_at(NOW), code_at(NOW - TOTP_STEP_SECONDS)}
    for code in (code_at(NOW - 2 * TOTP_STEP_SECONDS), code_at(NOW + TOTP_STEP_SECONDS), "000000"):
        if code not in accepted:  # six-digit codes of different steps can collide
            assert not totp_accepted(code, SECRET, NOW)
    for code in ("", "abcdef", "12345", "1234567", code_at(NOW) + "0"):
        assert not totp_accepted(code, SECRET, NOW)
