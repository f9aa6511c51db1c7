"""The factor vocabulary: Okta's three ways of naming a factor map onto one normalised type with
a strength class, and docs/facts.md lists exactly the values the code produces."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from factorflow.domain.factors import FACTOR_TYPES, STRENGTH, strength_of
from factorflow.domain.facts import Client, Engine, EnrolledBy, EventKind, Fact, Factor, Strength
from factorflow.okta.factors import (
    API_FACTOR_TYPES,
    AUTHENTICATORS,
    FRIENDLY_NAMES,
    METHODS,
    from_authenticator,
    from_friendly_name,
)

FACTS_DOC = Path(__file__).resolve().parents[2] / "docs" / "facts.md"
PACKAGE = Path(__file__).resolve().parents[2] / "src" / "factorflow"


@pytest.mark.parametrize(("name", "expected"), [
    ("EMAIL_FACTOR", "email"),
    ("email_factor", "email"),
    ("  OKTA_VERIFY_PUSH \n", "okta_verify_push"),
    ("FIDO_WEBAUTHN", "webauthn"),
    ("SIGNED_NONCE", "okta_fastpass"),
    ("SMS_FACTOR", "sms"),
    ("CALL_FACTOR", "voice"),
    ("PASSWORD_AS_FACTOR", "password"),
    ("SMART_CARD", "smart_card"),
    ("DUO_SECURITY", "duo"),
    ("ALL_FACTORS", None),  # a CAEP name for reset_all, not one factor
    ("", None),
    ("   ", None),
    (None, None),
])
def test_friendly_names(name: str | None, expected: str | None) -> None:
    assert from_friendly_name(name) == expected


@pytest.mark.parametrize(("authenticator", "method", "expected"), [
    # the method decides for Okta Verify
    ("Okta Verify", "PUSH", "okta_verify_push"),
    ("Okta Verify", "TOTP", "okta_verify_totp"),
    ("Okta Verify", "OTP", "okta_verify_totp"),
    ("Okta Verify", "SIGNED_NONCE", "okta_fastpass"),
    ("Okta Verify", "Use Okta FastPass", "okta_fastpass"),
    ("okta verify", "push", "okta_verify_push"),
    (" Okta Verify ", " PUSH ", "okta_verify_push"),
    ("Okta Verify", None, "okta_verify_push"),
    # telephony: the method tells SMS from voice
    ("Phone", "SMS", "sms"),
    ("Phone", "VOICE", "voice"),
    ("Phone", "CALL", "voice"),
    ("Phone", None, "sms"),
    # the name decides where the method says less
    ("Google Authenticator", "OTP", "totp"),
    ("Security Key or Biometric", "WEBAUTHN", "webauthn"),
    ("Passkey", None, "webauthn"),
    ("Smart Card Authenticator", None, "smart_card"),
    ("Email", "EMAIL", "email"),
    ("Password", "PASSWORD", "password"),
    ("Security Question", None, "security_question"),
    ("YubiKey", None, "yubikey_otp"),
    ("Duo Security", None, "duo"),
    # no name: the method alone
    (None, "PUSH", "okta_verify_push"),
    (None, "SMS", "sms"),
    ("", "EMAIL", "email"),
    # an authenticator we do not know: Okta Verify's methods become the generic ones
    ("Acme Push", "PUSH", "custom_push"),
    ("Acme Codes", "TOTP", "totp"),
    ("Acme Codes", "OTP", "totp"),
    ("Acme Phone", "SMS", "sms"),
    ("Acme Key", "WEBAUTHN", "webauthn"),
    ("Acme Quantum Badge", None, None),
    ("Acme Quantum Badge", "TELEPATHY", None),
    (None, None, None),
    ("", "", None),
])
def test_authenticator_and_method(authenticator: str | None, method: str | None,
                                  expected: str | None) -> None:
    assert from_authenticator(authenticator, method) == expected


def test_every_known_name_maps_to_a_type_with_a_strength() -> None:
    for vocabulary in (FRIENDLY_NAMES, AUTHENTICATORS, METHODS, API_FACTOR_TYPES):
        unrated = {name: kind for name, kind in vocabulary.items() if kind not in STRENGTH}
        assert unrated == {}


def test_the_types_are_the_rated_ones_and_unknown() -> None:
    assert (*STRENGTH, "unknown") == FACTOR_TYPES
    assert len(set(FACTOR_TYPES)) == len(FACTOR_TYPES)


def _factorflow_imports(module: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("factorflow")}


@pytest.mark.parametrize("package", ["domain", "rules"])
def test_domain_and_rules_do_not_import_okta(package: str) -> None:
    modules = sorted((PACKAGE / package).glob("*.py"))
    assert modules
    reaching = {
        module.name: sorted(name for name in _factorflow_imports(module)
                            if name.startswith("factorflow.okta"))
        for module in modules
    }
    assert {name: okta for name, okta in reaching.items() if okta} == {}


def test_domain_imports_only_domain() -> None:
    outside = {
        module.name: sorted(name for name in _factorflow_imports(module)
                            if not name.startswith("factorflow.domain"))
        for module in sorted((PACKAGE / "domain").glob("*.py"))
    }
    assert {name: names for name, names in outside.items() if names} == {}


def test_every_strength_class_is_reachable() -> None:
    assert set(STRENGTH.values()) == set(Strength) - {Strength.UNKNOWN}


@pytest.mark.parametrize(("factor_type", "expected"), [
    ("webauthn", Strength.PHISHING_RESISTANT),
    ("okta_fastpass", Strength.PHISHING_RESISTANT),
    ("okta_verify_push", Strength.DEVICE_BOUND_PUSH),
    ("custom_push", Strength.DEVICE_BOUND_PUSH),
    ("okta_verify_totp", Strength.OTP),
    ("totp", Strength.OTP),
    ("sms", Strength.TELEPHONY_EMAIL),
    ("voice", Strength.TELEPHONY_EMAIL),
    ("email", Strength.TELEPHONY_EMAIL),
    ("security_question", Strength.KNOWLEDGE),
    ("unknown", Strength.UNKNOWN),
    ("", Strength.UNKNOWN),
])
def test_strength_of_the_type(factor_type: str, expected: Strength) -> None:
    assert strength_of(factor_type) is expected
    assert strength_of(factor_type, ("DEVICE_BOUND", "USER_PRESENCE")) is expected


@pytest.mark.parametrize("factor_type", ["okta_verify_push", "sms", "unknown", "password"])
def test_phishing_resistant_property_upgrades_any_type(factor_type: str) -> None:
    verified = ("DEVICE_BOUND", "PHISHING_RESISTANT")
    assert strength_of(factor_type, verified) is Strength.PHISHING_RESISTANT


# --- docs/facts.md says what the code does --------------------------------------------------


def _doc_row(field: str) -> str:
    for line in FACTS_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith(f"| `{field}` |"):
            return line
    raise AssertionError(f"docs/facts.md has no row for {field}")


def _values(cell: str) -> set[str]:
    return set(re.findall(r"`([a-z0-9_]+)`", cell))


def _cells(field: str) -> list[str]:
    return [cell.strip() for cell in _doc_row(field).strip("|").split("|")]


def test_doc_lists_every_factor_type() -> None:
    assert _values(_cells("factor.type")[1]) == set(STRENGTH) | {"unknown"}


def test_doc_lists_every_strength() -> None:
    assert _values(_cells("factor.strength")[1]) == {strength.value for strength in Strength}


def test_doc_lists_every_kind_actor_and_engine() -> None:
    assert _values(_cells("kind")[1]) == {kind.value for kind in EventKind}
    assert _values(_cells("enrolled_by")[1]) == {who.value for who in EnrolledBy}
    assert _values(_cells("engine")[1]) == {engine.value for engine in Engine}


def test_doc_names_every_field_of_a_fact() -> None:
    rows = [line for line in FACTS_DOC.read_text(encoding="utf-8").splitlines()
            if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([a-z0-9_.]+)`", row.split("|")[1])}
    assert {name.split(".")[0] for name in named} == set(Fact.__dataclass_fields__)
    assert {name.split(".")[1] for name in named if name.startswith("factor.")} == set(
        Factor.__dataclass_fields__)
    assert _values(_cells("client")[1]) >= set(Client.__dataclass_fields__)
