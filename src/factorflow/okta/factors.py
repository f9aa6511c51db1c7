"""Okta's many names for one factor, mapped to one normalised type (``factorflow.domain.factors``
holds the types and their strength classes).

Okta names factors in three vocabularies: the Classic ``outcome.reason`` and
``debugData.factor`` "friendly names" (``FIDO_WEBAUTHN``, ``OKTA_VERIFY_PUSH``…), the Identity
Engine authenticator display names (``Okta Verify``, ``Phone``…) with a method
(``PUSH``, ``SMS``…), and the Factors API ``factorType`` (``push``, ``webauthn``…). Anything we do
not know maps to nothing here, and to ``unknown`` in the fact, rather than failing.
"""

from __future__ import annotations

# Classic friendly names (outcome.reason, debugData.factor)
FRIENDLY_NAMES: dict[str, str] = {
    "FIDO_WEBAUTHN": "webauthn",
    "WEBAUTHN": "webauthn",
    "FIDO_U2F": "u2f",
    "U2F": "u2f",
    "SIGNED_NONCE": "okta_fastpass",
    "SMART_CARD": "smart_card",
    "SMART_CARD_IDP": "smart_card",
    "OKTA_VERIFY_PUSH": "okta_verify_push",
    "OKTA_VERIFY": "okta_verify_push",
    "PUSH": "okta_verify_push",
    "CUSTOM_APP_PUSH": "custom_push",
    "DUO_SECURITY": "duo",
    "DUO": "duo",
    "SOFT_TOKEN": "totp",
    "OKTA_SOFT_TOKEN": "okta_verify_totp",
    "GOOGLE_OTP": "totp",
    "CUSTOM_HOTP": "hotp",
    "YUBIKEY_OTP_FACTOR": "yubikey_otp",
    "YUBIKEY_TOKEN": "yubikey_otp",
    "RSA_SECURID": "rsa_securid",
    "RSA_TOKEN": "rsa_securid",
    "SYMANTEC_VIP": "symantec_vip",
    "SMS_FACTOR": "sms",
    "SMS": "sms",
    "CALL_FACTOR": "voice",
    "VOICE": "voice",
    "CALL": "voice",
    "EMAIL_FACTOR": "email",
    "EMAIL": "email",
    "PASSWORD_AS_FACTOR": "password",
    "PASSWORD": "password",
    "SECURITY_QUESTION": "security_question",
}

# Identity Engine authenticator display names (lower-cased) -> type when the method is unknown
AUTHENTICATORS: dict[str, str] = {
    "okta verify": "okta_verify_push",
    "okta fastpass": "okta_fastpass",
    "security key or biometric": "webauthn",
    "fido2 (webauthn)": "webauthn",
    "passkey": "webauthn",
    "passkeys": "webauthn",
    "smart card authenticator": "smart_card",
    "smart card": "smart_card",
    "piv / cac": "smart_card",
    "phone": "sms",
    "email": "email",
    "password": "password",
    "security question": "security_question",
    "google authenticator": "totp",
    "yubikey": "yubikey_otp",
    "yubikey otp": "yubikey_otp",
    "duo security": "duo",
    "rsa securid": "rsa_securid",
    "symantec vip": "symantec_vip",
    "custom authenticator": "custom_push",
    "custom otp": "hotp",
}

# methodTypeUsed values -> type (the method is more precise than the authenticator name)
METHODS: dict[str, str] = {
    "push": "okta_verify_push",
    "totp": "okta_verify_totp",
    "otp": "okta_verify_totp",
    "signed_nonce": "okta_fastpass",
    "use okta fastpass": "okta_fastpass",
    "fastpass": "okta_fastpass",
    "sms": "sms",
    "voice": "voice",
    "call": "voice",
    "email": "email",
    "webauthn": "webauthn",
    "security key or biometric": "webauthn",
    "password": "password",
}

# Okta Verify's methods, as seen on an authenticator that is not Okta Verify
_FOREIGN_METHODS: dict[str, str] = {
    "okta_verify_push": "custom_push",
    "okta_verify_totp": "totp",
}

# Factors API factorType -> type
API_FACTOR_TYPES: dict[str, str] = {
    "push": "okta_verify_push",
    "signed_nonce": "okta_fastpass",
    "webauthn": "webauthn",
    "u2f": "u2f",
    "sms": "sms",
    "call": "voice",
    "email": "email",
    "question": "security_question",
    "token:software:totp": "totp",
    "token:hotp": "hotp",
    "token:hardware": "yubikey_otp",
    "token": "rsa_securid",
    "web": "duo",
}


def from_friendly_name(name: str | None) -> str | None:
    return FRIENDLY_NAMES.get(name.strip().upper()) if name else None


def from_authenticator(display_name: str | None, method: str | None) -> str | None:
    """OIE: the method decides where it is known (Okta Verify push vs TOTP vs FastPass)."""
    by_method = METHODS.get(method.strip().lower()) if method else None
    by_name = AUTHENTICATORS.get(display_name.strip().lower()) if display_name else None
    if by_method and by_name:
        # "Okta Verify" + TOTP is Okta Verify's code; "Google Authenticator" + OTP stays totp.
        if by_name == "okta_verify_push" or by_method in ("sms", "voice", "okta_fastpass"):
            return by_method
        return by_name
    if by_method and display_name and display_name.strip():
        # A named authenticator we do not know (custom authenticators carry the name the admin
        # gave them): its push or code is not Okta Verify's.
        return _FOREIGN_METHODS.get(by_method, by_method)
    return by_method or by_name

