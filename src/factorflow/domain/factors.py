"""The factor vocabulary: every normalised factor type and the strength class it belongs to.

These names are what facts carry (``Fact.factor.type``), what rules match on (``factor_type``,
``recent_factor_event.factor_types``) and what the dashboard filters by. How Okta's own names
for a factor map onto them is Okta's business (``factorflow.okta.factors``).
"""

from __future__ import annotations

from factorflow.domain.facts import Strength

UNKNOWN_FACTOR_TYPE = "unknown"  # a factor whose type could not be read

# normalised type -> strength class
STRENGTH: dict[str, Strength] = {
    "webauthn": Strength.PHISHING_RESISTANT,
    "okta_fastpass": Strength.PHISHING_RESISTANT,
    "smart_card": Strength.PHISHING_RESISTANT,
    "u2f": Strength.PHISHING_RESISTANT,
    "okta_verify_push": Strength.DEVICE_BOUND_PUSH,
    "custom_push": Strength.DEVICE_BOUND_PUSH,
    "duo": Strength.DEVICE_BOUND_PUSH,
    "totp": Strength.OTP,
    "okta_verify_totp": Strength.OTP,
    "hotp": Strength.OTP,
    "yubikey_otp": Strength.OTP,
    "rsa_securid": Strength.OTP,
    "symantec_vip": Strength.OTP,
    "sms": Strength.TELEPHONY_EMAIL,
    "voice": Strength.TELEPHONY_EMAIL,
    "email": Strength.TELEPHONY_EMAIL,
    "password": Strength.KNOWLEDGE,
    "security_question": Strength.KNOWLEDGE,
}

# Every type a fact can carry, in the order above, ``unknown`` last.
FACTOR_TYPES: tuple[str, ...] = (*STRENGTH, UNKNOWN_FACTOR_TYPE)

# A verified property of the method used that makes any factor phishing-resistant.
PHISHING_RESISTANT_PROPERTY = "PHISHING_RESISTANT"


def strength_of(factor_type: str, verified_properties: tuple[str, ...] = ()) -> Strength:
    if PHISHING_RESISTANT_PROPERTY in verified_properties:
        return Strength.PHISHING_RESISTANT
    return STRENGTH.get(factor_type, Strength.UNKNOWN)
