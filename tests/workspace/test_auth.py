"""The TOTP second factor: which codes count (no hub needed)."""

from __future__ import annotations

import onetimepass

from enclave.workspace.auth import TOTP_STEP_SECONDS, current_totp_for

SECRET = "JBSWY3DPEHPK3PXP"
NOW = 1_790_000_015  # 15 s into a step


def code_at(clock: float) -> str:
    return str(onetimepass.get_totp(SECRET, clock=int(clock))).zfill(6)


def test_the_current_code_counts():
    assert current_totp_for(code_at(NOW), SECRET, NOW) == code_at(NOW)
    assert onetimepass.valid_totp(current_totp_for(code_at(NOW), SECRET, NOW), SECRET, clock=NOW)


def test_a_code_typed_as_its_step_ended_still_counts():
    typed = code_at(NOW - TOTP_STEP_SECONDS)
    assert typed != code_at(NOW)
    assert current_totp_for(typed, SECRET, NOW) == code_at(NOW)
    assert current_totp_for(f" {typed} ", SECRET, NOW) == code_at(NOW)


def test_older_future_and_wrong_codes_are_left_to_be_refused():
    for code in (code_at(NOW - 2 * TOTP_STEP_SECONDS), code_at(NOW + TOTP_STEP_SECONDS),
                 "000000", "", "abcdef"):
        if code in (code_at(NOW), code_at(NOW - TOTP_STEP_SECONDS)):
            continue  # a collision of 6-digit codes; nothing to test
        assert current_totp_for(code, SECRET, NOW) == code.strip()
        assert not onetimepass.valid_totp(current_totp_for(code, SECRET, NOW), SECRET, clock=NOW)
