"""A generated Okta org: users, groups, factors, authenticator enrollments and a System Log.

Everything is derived from a seed, so the same ``generate_org(users, seed)`` (with the same clock)
gives the same org. Identifiers look like Okta's (``00u…`` users, ``00g…`` groups), logins are
``first.last@example.com``, and the groups include "Everyone" (built in), "Privileged Access",
"Helpdesk", "Contractors" and one per department.

:meth:`SimOrg.generate_enrollments` enrolls users in new factors and appends the System Log events
Okta would write: ``user.mfa.factor.activate`` in Classic or Identity Engine shape (the latter with
SMS + voice twins for a phone), by the user, an admin, an API token or a service app, plus related
events (``user.session.start`` before a self-enrollment, ``user.authentication.auth_via_mfa``
after some, and the odd ``user.mfa.factor.deactivate``). The org state changes to match, so the
Factors and Authenticator Enrollments APIs agree with the log.
"""

from __future__ import annotations

import copy
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from factorflow.okta.simulator.clock import Clock, WallClock
from factorflow.okta.simulator.events import (
    Actor,
    ActorKind,
    Engine,
    actor_for,
    enrollment_target,
    group_target,
    log_event,
    okta_id,
    okta_time,
    service_app_ref,
    user_ref,
)

OrgEngine = Literal["classic", "identity_engine", "mixed"]
PRIVILEGED_GROUP = "Privileged Access"
HELPDESK_GROUP = "Helpdesk"
DAY = 86_400.0

_FIRST = ("Pat", "Alex", "Sam", "Robin", "Kim", "Jordan", "Taylor", "Morgan", "Casey", "Riley",
          "Avery", "Quinn", "Jamie", "Drew", "Noor", "Mei", "Ravi", "Lena", "Omar", "Ines")
_LAST = ("Lee", "Garcia", "Smith", "Nguyen", "Okafor", "Müller", "Rossi", "Kowalski", "Silva",
         "Tanaka", "Haddad", "Novak", "Jensen", "Dubois", "Park", "Costa", "Khan", "Berg")
_DEPARTMENTS = {
    "Engineering": ("Software Engineer", "Senior Software Engineer", "Engineering Manager",
                    "Site Reliability Engineer"),
    "IT": ("Systems Administrator", "Domain Administrator", "IT Support Specialist"),
    "Finance": ("Accountant", "Financial Analyst", "Controller"),
    "Sales": ("Account Executive", "Sales Engineer", "Sales Manager"),
    "Marketing": ("Marketing Specialist", "Content Writer"),
    "Support": ("Support Engineer", "Support Lead"),
    "HR": ("HR Generalist", "Recruiter"),
    "Legal": ("Counsel", "Paralegal"),
}


@dataclass(frozen=True, slots=True)
class FactorKind:
    """One thing a user can enroll, in all of Okta's vocabularies."""

    name: str
    factors: tuple[tuple[str, str, str, str], ...]  # (factorType, provider, id prefix, friendly)
    authenticator: tuple[str, str, str]  # (enrollment type, key, display name)
    methods: tuple[tuple[str, str], ...]  # Identity Engine (methodTypeUsed, verified properties)
    classic: bool = True  # exists in Classic orgs
    weight: int = 1


_VERIFIED_OV = "[DEVICE_BOUND, USER_PRESENCE, HARDWARE_PROTECTED]"
KINDS: tuple[FactorKind, ...] = (
    FactorKind("okta_verify", (("push", "OKTA", "opf", "OKTA_VERIFY_PUSH"),
                               ("token:software:totp", "OKTA", "ost", "OKTA_SOFT_TOKEN"),
                               ("signed_nonce", "OKTA", "crp", "SIGNED_NONCE")),
               ("app", "okta_verify", "Okta Verify"), (("PUSH", _VERIFIED_OV),), weight=35),
    FactorKind("phone", (("sms", "OKTA", "mbl", "SMS_FACTOR"), ("call", "OKTA", "clf",
                                                                  "CALL_FACTOR")),
               ("phone", "phone_number", "Phone"),
               (("SMS", "[USER_PRESENCE]"), ("VOICE", "[USER_PRESENCE]")), weight=20),
    FactorKind("email", (("email", "OKTA", "emf", "EMAIL_FACTOR"),),
               ("email", "okta_email", "Email"), (("EMAIL", "[USER_PRESENCE]"),), weight=10),
    FactorKind("webauthn", (("webauthn", "FIDO", "fwf", "FIDO_WEBAUTHN"),),
               ("security_key", "webauthn", "Security Key or Biometric"),
               (("WEBAUTHN", "[PHISHING_RESISTANT, USER_PRESENCE, HARDWARE_PROTECTED]"),),
               weight=15),
    FactorKind("google_otp", (("token:software:totp", "GOOGLE", "uft", "GOOGLE_OTP"),),
               ("app", "google_otp", "Google Authenticator"), (("TOTP", "[USER_PRESENCE]"),),
               weight=10),
    FactorKind("security_question", (("question", "OKTA", "ufs", "SECURITY_QUESTION"),),
               ("security_question", "security_question", "Security Question"),
               (("SECURITY_QUESTION", "[]"),), weight=4),
    FactorKind("yubikey", (("token:hardware", "YUBICO", "ykf", "YUBIKEY_OTP_FACTOR"),),
               ("security_key", "yubikey_token", "YubiKey Authenticator"),
               (("OTP", "[HARDWARE_PROTECTED]"),), weight=3),
    # Not in Okta's factorType enum: the official SDK fails on it; a lenient client must not.
    FactorKind("claims_provider", (("claims_provider", "CUSTOM", "cpf", "CLAIMS_PROVIDER"),),
               ("federated", "external_idp", "IdP Authenticator"),
               (("CLAIMS_PROVIDER", "[USER_PRESENCE]"),), classic=False, weight=3),
)
KIND_BY_NAME = {kind.name: kind for kind in KINDS}
_ACTOR_WEIGHTS: tuple[tuple[ActorKind, int], ...] = (
    ("self", 70), ("admin", 18), ("api_token", 6), ("service_app", 6),
)


@dataclass
class SimUser:
    id: str
    status: str
    created: float
    profile: dict[str, Any]
    group_ids: list[str] = field(default_factory=list)
    factors: list[dict[str, Any]] = field(default_factory=list)
    enrollments: list[dict[str, Any]] = field(default_factory=list)
    last_login: float | None = None

    @property
    def login(self) -> str:
        return str(self.profile["login"])

    @property
    def display_name(self) -> str:
        return f"{self.profile['firstName']} {self.profile['lastName']}"

    def ref(self) -> dict[str, Any]:
        return user_ref(self.id, self.login, self.display_name)

    def kinds(self) -> set[str]:
        return {str(e["_kind"]) for e in self.enrollments if "_kind" in e}


@dataclass
class SimGroup:
    id: str
    name: str
    description: str
    type: str
    created: float
    last_membership_updated: float


class SystemLog:
    """Events in the order they were persisted; thread-safe."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def append(self, events: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            self._events.extend(events)

    def snapshot(self) -> list[dict[str, Any]]:
        """The events so far (the list is a copy; the events are shared, do not change them)."""
        with self._lock:
            return list(self._events)

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)


class SimOrg:
    def __init__(self, *, seed: int, clock: Clock, engine: OrgEngine) -> None:
        self.seed = seed
        self.clock = clock
        self.engine = engine
        self.users: dict[str, SimUser] = {}
        self.groups: dict[str, SimGroup] = {}
        self.log = SystemLog()
        self.authenticator_ids: dict[str, str] = {}
        self.user_type_id = ""
        self.api_token_id = ""
        self.service_app = service_app_ref("0oa1serviceapp00000", "Provisioning Service")
        self._by_login: dict[str, SimUser] = {}
        self._lock = threading.RLock()
        self._generated = 0

    # -- lookups ---------------------------------------------------------------------------

    def user(self, id_or_login: str) -> SimUser | None:
        with self._lock:
            return self.users.get(id_or_login) or self._by_login.get(id_or_login.casefold())

    def group_named(self, name: str) -> SimGroup:
        for group in self.groups.values():
            if group.name == name:
                return group
        raise KeyError(name)

    def members(self, group_id: str) -> list[SimUser]:
        with self._lock:
            return [u for u in self.users.values() if group_id in u.group_ids]

    @property
    def admins(self) -> list[SimUser]:
        helpdesk = self.group_named(HELPDESK_GROUP).id
        return [u for u in self.users.values() if helpdesk in u.group_ids]

    @property
    def api_admin(self) -> SimUser:
        """The admin who owns the org's API token: the actor of API-token calls."""
        return next(iter(self.users.values()))

    def events(self, event_types: Iterable[str] | None = None) -> list[dict[str, Any]]:
        wanted = set(event_types) if event_types is not None else None
        return [e for e in self.log.snapshot() if wanted is None or e["eventType"] in wanted]

    # -- changes ---------------------------------------------------------------------------

    def add_user(self, user: SimUser) -> None:
        with self._lock:
            self.users[user.id] = user
            self._by_login[user.login.casefold()] = user

    def add_group(self, name: str, description: str = "") -> SimGroup:
        """An Okta group named ``name`` (the existing one if there is one)."""
        with self._lock:
            for group in self.groups.values():
                if group.name == name:
                    return group
            now = self.clock.time()
            group = SimGroup(id=okta_id(self._rng("group"), "00g"), name=name,
                             description=description, type="OKTA_GROUP", created=now,
                             last_membership_updated=now)
            self.groups[group.id] = group
            return group

    def set_membership(self, group_id: str, user_id: str, member: bool, actor: Actor) -> bool:
        """Add or remove; True if it changed (then a group.user_membership event is logged)."""
        with self._lock:
            user, group = self.users[user_id], self.groups[group_id]
            if (group_id in user.group_ids) == member:
                return False
            if member:
                user.group_ids.append(group_id)
            else:
                user.group_ids.remove(group_id)
            now = self.clock.time()
            group.last_membership_updated = now
            rng = self._rng("membership")
            self.log.append([log_event(
                rng,
                event_type="group.user_membership." + ("add" if member else "remove"),
                display_message=("Add user to group membership" if member
                                 else "Remove user from group membership"),
                legacy="core.user_group_member.user_" + ("add" if member else "remove"),
                published=now, actor=actor,
                targets=[user.ref(), group_target(group.id, group.name)],
                request_uri=f"/api/v1/groups/{group.id}/users/{user.id}",
            )])
            return True

    def generate_enrollments(self, count: int, seed: int | None = None) -> list[dict[str, Any]]:
        """Enroll ``count`` factors (active users only) and append their System Log events,
        spread over the minutes before now; return the appended events (activations plus
        related events). The same seed after the same history gives the same events."""
        with self._lock:
            rng = self._rng("enrollments" if seed is None else f"enrollments:{seed}")
            candidates = [u for u in self.users.values() if u.status == "ACTIVE"]
            if not candidates or count <= 0:
                return []
            gaps = [rng.uniform(1.0, 40.0) for _ in range(count)]
            moment = self.clock.time() - sum(gaps)
            events: list[dict[str, Any]] = []
            for gap in gaps:
                moment += gap
                events.extend(self._enroll_one(rng, rng.choice(candidates), moment))
            self.log.append(events)
            return events

    def _rng(self, purpose: str) -> random.Random:
        # Seeded by the org's seed, the purpose and how much was generated before: repeatable,
        # and never the same ids twice.
        self._generated += 1
        return random.Random(f"{self.seed}:{purpose}:{self._generated}:{len(self.log)}")

    def _enroll_one(self, rng: random.Random, user: SimUser, moment: float) -> list[dict[str, Any]]:
        engine: Engine = (
            self.engine if self.engine != "mixed"
            else rng.choice(("classic", "identity_engine"))
        )
        kind = self._pick_kind(rng, user, engine)
        actor_kind = rng.choices([k for k, _ in _ACTOR_WEIGHTS],
                                 [w for _, w in _ACTOR_WEIGHTS])[0]
        admins = [a for a in self.admins if a.id != user.id] or self.admins
        actor = actor_for(actor_kind, rng, user=user.ref(), admin=rng.choice(admins).ref(),
                          api_admin=self.api_admin.ref(), api_token_id=self.api_token_id,
                          service_app=self.service_app)
        events: list[dict[str, Any]] = []
        if actor_kind == "self" and rng.random() < 0.5:
            events.append(self._session_start(rng, user, actor, moment - rng.uniform(5, 60),
                                              engine))
        if rng.random() < 0.05 and user.factors:
            events.append(self._deactivate(rng, user, actor, moment - 1.0, engine))
        enrollment_id, factors = self._apply(rng, user, kind, engine, moment)
        methods = kind.methods if engine == "identity_engine" else kind.methods[:1]
        for index, (method, verified) in enumerate(methods):
            friendly = kind.factors[min(index, len(kind.factors) - 1)][3]
            factor = factors[min(index, len(factors) - 1)]
            targets = [user.ref()]
            if engine == "identity_engine":
                targets.append(enrollment_target(enrollment_id, kind.authenticator[2], method,
                                                 verified))
            uri = _activation_uri(actor.kind, engine, user.id, str(factor["id"]))
            events.append(log_event(
                rng, event_type="user.mfa.factor.activate",
                display_message=("Activate factor or authenticator enrollment method for user"
                                 if engine == "identity_engine" else "Activate factor for user"),
                legacy="core.user.factor.activate", published=moment, actor=actor,
                targets=targets, reason=f"User set up {friendly} factor", engine=engine,
                request_uri=uri,
            ))
        if actor_kind == "self" and rng.random() < 0.3:
            events.append(self._auth_via_mfa(rng, user, actor, moment + 0.5, kind, engine))
        return events

    def _pick_kind(self, rng: random.Random, user: SimUser, engine: Engine) -> FactorKind:
        have = user.kinds()
        choices = [k for k in KINDS if (k.classic or engine == "identity_engine")
                   and (k.name not in have or k.name == "webauthn")]
        return rng.choices(choices, [k.weight for k in choices])[0]

    def _apply(self, rng: random.Random, user: SimUser, kind: FactorKind, engine: Engine,
               moment: float) -> tuple[str, list[dict[str, Any]]]:
        """Give ``user`` the enrollment and its factors; (enrollment id, new factors)."""
        factor_specs = kind.factors if engine == "identity_engine" else kind.factors[:1]
        factors = [make_factor(rng, user, spec, moment) for spec in factor_specs]
        user.factors.extend(factors)
        enrollment = make_enrollment(rng, user, kind, self.authenticator_ids, moment)
        user.enrollments.append(enrollment)
        return str(enrollment["id"]), factors

    def _session_start(self, rng: random.Random, user: SimUser, actor: Actor, moment: float,
                       engine: Engine) -> dict[str, Any]:
        return log_event(rng, event_type="user.session.start",
                         display_message="User login to Okta",
                         legacy="core.user_auth.login_success", published=moment,
                         actor=actor, targets=[], engine=engine,
                         request_uri="/idp/idx/identify" if engine == "identity_engine"
                         else "/api/v1/authn")

    def _deactivate(self, rng: random.Random, user: SimUser, actor: Actor, moment: float,
                    engine: Engine) -> dict[str, Any]:
        factor = rng.choice(user.factors)
        user.factors.remove(factor)
        friendly = _friendly(str(factor["factorType"]), str(factor["provider"]))
        return log_event(rng, event_type="user.mfa.factor.deactivate",
                         display_message="Reset factor for user",
                         legacy="core.user.factor.deactivate", published=moment, actor=actor,
                         targets=[user.ref()], reason=f"User reset {friendly} factor",
                         engine=engine,
                         request_uri=f"/api/v1/users/{user.id}/factors/{factor['id']}")

    def _auth_via_mfa(self, rng: random.Random, user: SimUser, actor: Actor, moment: float,
                      kind: FactorKind, engine: Engine) -> dict[str, Any]:
        targets = [user.ref()]
        return log_event(rng, event_type="user.authentication.auth_via_mfa",
                         display_message="Authentication of user via MFA",
                         legacy="core.user.factor.attempt_success", published=moment,
                         actor=actor, targets=targets, engine=engine,
                         request_uri="/idp/idx/challenge/answer",
                         debug={"factor": kind.factors[0][3]})


def _activation_uri(kind: ActorKind, engine: Engine, user_id: str, factor_id: str) -> str:
    if kind == "self":
        return ("/idp/idx/challenge/answer" if engine == "identity_engine"
                else f"/api/v1/authn/factors/{factor_id}/lifecycle/activate")
    return f"/api/v1/users/{user_id}/factors/{factor_id}/lifecycle/activate"


def _friendly(factor_type: str, provider: str) -> str:
    for kind in KINDS:
        for spec in kind.factors:
            if spec[0] == factor_type and spec[1] == provider:
                return spec[3]
    return factor_type.upper()


def make_factor(rng: random.Random, user: SimUser, spec: tuple[str, str, str, str],
                moment: float) -> dict[str, Any]:
    """A Factors API object (links are added when it is served)."""
    factor_type, provider, prefix, _friendly_name = spec
    profile: dict[str, Any]
    phone = f"+1-555-01{rng.randrange(10):01d}-{rng.randrange(10000):04d}"
    if factor_type in ("sms", "call"):
        profile = {"phoneNumber": phone}
    elif factor_type == "email":
        profile = {"email": user.profile["email"]}
    elif factor_type == "question":
        profile = {"question": "favorite_art_piece",
                   "questionText": "What is your favorite piece of art?"}
    elif factor_type == "push":
        profile = {"credentialId": user.login, "deviceType": "SmartPhone_IPhone",
                   "name": f"{user.profile['firstName']}'s iPhone", "platform": "IOS",
                   "version": "17.5.1"}
    elif factor_type == "webauthn":
        profile = {"credentialId": okta_id(rng, "")[:20],
                   "authenticatorName": "Security Key or Biometric"}
    else:
        profile = {"credentialId": user.login}
    created = okta_time(moment)
    return {
        "id": okta_id(rng, prefix), "factorType": factor_type, "provider": provider,
        "vendorName": provider, "status": "ACTIVE", "created": created, "lastUpdated": created,
        "profile": profile,
    }


def make_enrollment(rng: random.Random, user: SimUser, kind: FactorKind,
                    authenticator_ids: dict[str, str], moment: float) -> dict[str, Any]:
    """An Authenticator Enrollments API object; ``_kind`` is internal and not served."""
    enrollment_type, key, name = kind.authenticator
    profile: dict[str, Any] | None = None
    if kind.name == "email":
        profile = {"email": user.profile["email"]}
    elif kind.name == "phone":
        profile = {"phoneNumber": f"+1 XXX-XXX-{rng.randrange(10000):04d}"}
    created = okta_time(moment)
    enrollment: dict[str, Any] = {
        "type": enrollment_type, "id": okta_id(rng, "pfd" if key == "okta_verify" else "eae"),
        "key": key, "status": "ACTIVE", "name": name,
    }
    if profile is not None:
        enrollment["profile"] = profile
    enrollment.update({"nickname": None, "created": created, "lastUpdated": created,
                       "_kind": kind.name, "_authenticator": authenticator_ids.get(key, "")})
    return enrollment


def generate_org(users: int = 50, seed: int = 1, *, clock: Clock | None = None,
                 engine: OrgEngine = "mixed") -> SimOrg:
    """An org of ``users`` users (at least 3: an API admin and two helpdesk admins)."""
    if users < 3:
        raise ValueError("an org needs at least 3 users")
    clock = clock or WallClock()
    org = SimOrg(seed=seed, clock=clock, engine=engine)
    rng = random.Random(f"org:{seed}")
    now = clock.time()
    org.user_type_id = okta_id(rng, "oty")
    org.api_token_id = okta_id(rng, "00T")
    org.service_app = service_app_ref(okta_id(rng, "0oa"), "Provisioning Service")
    org.authenticator_ids = {k.authenticator[1]: okta_id(rng, "aut") for k in KINDS}
    org.authenticator_ids["okta_password"] = okta_id(rng, "aut")
    founded = now - 900 * DAY
    names = ["Everyone", PRIVILEGED_GROUP, HELPDESK_GROUP, "Contractors", *_DEPARTMENTS]
    for name in names:
        group = SimGroup(
            id=okta_id(rng, "00g"), name=name,
            description=("All users in your organization" if name == "Everyone"
                         else f"{name} (simulated)"),
            type="BUILT_IN" if name == "Everyone" else "OKTA_GROUP",
            created=founded, last_membership_updated=founded,
        )
        org.groups[group.id] = group
    by_name = {g.name: g.id for g in org.groups.values()}
    taken: set[str] = set()
    for index in range(users):
        user = _make_user(rng, index, now, taken, org.user_type_id)
        user.group_ids.append(by_name["Everyone"])
        user.group_ids.append(by_name[user.profile["department"]])
        if index == 0 or (index > 2 and rng.random() < 0.05):
            user.group_ids.append(by_name[PRIVILEGED_GROUP])
        if index in (1, 2):
            user.group_ids.append(by_name[HELPDESK_GROUP])
        if user.profile["userType"] == "Contractor":
            user.group_ids.append(by_name["Contractors"])
        _initial_factors(rng, user, org, engine)
        org.add_user(user)
    return org


def _make_user(rng: random.Random, index: int, now: float, taken: set[str],
               user_type_id: str) -> SimUser:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    base = f"{first}.{last}".lower().replace("ü", "ue")
    login = f"{base}@example.com"
    number = 2
    while login in taken:
        login = f"{base}{number}@example.com"
        number += 1
    taken.add(login)
    if index == 0:
        department, title = "IT", "Okta Administrator"
    elif index in (1, 2):
        department, title = "IT", "IT Support Specialist"
    else:
        department = rng.choice(list(_DEPARTMENTS))
        title = rng.choice(_DEPARTMENTS[department])
    status = "ACTIVE" if index < 3 or rng.random() < 0.9 else rng.choice(
        ("PROVISIONED", "SUSPENDED", "DEPROVISIONED", "LOCKED_OUT"))
    created = now - rng.uniform(30, 850) * DAY
    profile = {
        "firstName": first, "lastName": last, "mobilePhone": None, "secondEmail": None,
        "login": login, "email": login, "displayName": f"{first} {last}",
        "department": department, "title": title, "employeeNumber": str(1000 + index),
        "userType": "Contractor" if index > 2 and rng.random() < 0.1 else "Employee",
        "organization": "Example Corp",
    }
    return SimUser(id=okta_id(rng, "00u"), status=status, created=created, profile=profile,
                   last_login=now - rng.uniform(0, 20) * DAY if status == "ACTIVE" else None)


def _initial_factors(rng: random.Random, user: SimUser, org: SimOrg, engine: OrgEngine) -> None:
    """What users had before the log window: a password, mostly email, sometimes more."""
    created = user.created + DAY
    user.enrollments.append({
        "type": "password", "id": okta_id(rng, "lae"), "key": "okta_password",
        "status": "ACTIVE", "name": "Password", "nickname": None,
        "created": okta_time(user.created), "lastUpdated": okta_time(user.created),
        "_authenticator": org.authenticator_ids["okta_password"],
    })
    if user.status != "ACTIVE":
        return
    initial = ["email"] if rng.random() < 0.7 else []
    if rng.random() < 0.3:
        initial.append("okta_verify")
    if engine != "classic" and rng.random() < 0.05:
        initial.append("claims_provider")
    for name in initial:
        kind = KIND_BY_NAME[name]
        specs = kind.factors if engine != "classic" else kind.factors[:1]
        user.factors.extend(make_factor(rng, user, spec, created) for spec in specs)
        user.enrollments.append(make_enrollment(rng, user, kind, org.authenticator_ids, created))


def public_copy(item: dict[str, Any]) -> dict[str, Any]:
    """An API object without the simulator's own ``_kind`` / ``_authenticator`` keys."""
    return {k: copy.deepcopy(v) for k, v in item.items() if k not in ("_kind", "_authenticator")}
