"""One Settings object, built once (in the CLI) and passed down.

Sources, highest priority first: environment variables ``FACTORFLOW_<SECTION>__<KEY>`` (for
example ``FACTORFLOW_HOOK__SECRET``), then the TOML config file, then the defaults below.
Secrets can come from the environment, from the file, or from a file named by ``*_file``; they
are ``SecretStr`` so they never print.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from factorflow.errors import ConfigError
from factorflow.okta.api_settings import OktaApiSettings
from factorflow.pipeline.screening import DEFAULT_EVENT_TYPES

ENV_PREFIX = "FACTORFLOW_"
_ORG_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    graceful_timeout_seconds: float = Field(10.0, gt=0)
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="proxies whose X-Forwarded-For/-Proto are trusted (comma-separated, or *)",
    )


class MetricsSettings(_Section):
    """``[metrics]``: /metrics on a port of its own (for a scraper on another network than
    Okta's), in ``factorflow serve`` and ``factorflow worker`` alike."""

    port: int | None = Field(
        None, ge=1, le=65535, description="serve /metrics on this port too (default: no)"
    )
    host: str | None = Field(None, min_length=1, description="default: server.host")
    on_main_port: bool = Field(
        True, description="also answer /metrics on server.port (false needs metrics.port)"
    )

    @model_validator(mode="after")
    def _served_somewhere(self) -> MetricsSettings:
        if self.port is None and not self.on_main_port:
            raise ValueError("on_main_port = false needs a port, or /metrics is served nowhere")
        return self


class HookSettings(_Section):
    path: str = "/hooks/okta"
    org: str = Field("default", min_length=1, max_length=64)
    auth_header: str = "Authorization"
    secret: SecretStr | None = None
    secret_file: Path | None = None
    previous_secret: SecretStr | None = None
    previous_secret_file: Path | None = None
    max_body_bytes: int = Field(1_048_576, gt=0, le=64 * 1_048_576)

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not value.startswith("/") or "?" in value or "#" in value or "//" in value:
            raise ValueError("must be an absolute URL path such as /hooks/okta")
        return value.rstrip("/") or "/"

    @field_validator("auth_header")
    @classmethod
    def _header_is_a_token(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise ValueError("must be a valid HTTP header name")
        return value


class OrgSettings(_Section):
    """One Okta org in a multi-org deployment: ``[orgs.<name>]`` with its own hook (path,
    header, secrets), rules and directory. Without any ``[orgs.*]``, ``[hook]`` and
    ``[pipeline]`` describe the one org, named ``hook.org``."""

    hook: HookSettings = HookSettings()
    rules_file: Path | None = None
    directory_file: Path | None = None
    okta: OktaApiSettings | None = None


@dataclass(frozen=True)
class Org:
    name: str
    hook: HookSettings
    rules_file: Path | None
    directory_file: Path | None
    secret_file_name: str  # where a generated hook secret is kept, in data_dir
    okta: OktaApiSettings | None = None  # the org's API, for enrichment and the System Log


class StoreSettings(_Section):
    url: str | None = Field(
        None, description="sqlite:///path or postgresql://...; default: a file in data_dir"
    )
    # 32: the fsync is shared by enough deliveries; a larger batch only makes every request
    # in it wait for the last one (measured in bench/README.md, "What limits the receiver").
    max_batch: int = Field(32, ge=1, le=10_000)
    intake: Literal["process", "thread"] = Field(
        "process",
        description="where hook bodies are parsed and committed: a child process (default) "
        "or a thread of the server process",
    )


class RetryPolicySettings(_Section):
    max_attempts: int = Field(6, ge=1, le=100)
    initial_seconds: float = Field(2.0, ge=0)
    max_seconds: float = Field(600.0, ge=0)
    multiplier: float = Field(2.0, ge=1)


class PipelineSettings(_Section):
    rules_file: Path | None = Field(
        None, description="YAML rules; without one every fact is stored for reporting"
    )
    directory_file: Path | None = Field(
        None, description="YAML or CSV export of users, their attributes and groups"
    )
    event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES
    own_actor_ids: tuple[str, ...] = Field(
        (), description="factorflow's own Okta service account / app ids: their events loop"
    )
    retry: dict[str, RetryPolicySettings] = Field(
        default_factory=dict, description="per action kind; the key 'default' applies to all"
    )


class ActionSettings(_Section):
    webhook_secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="named Standard Webhooks secrets (whsec_...); rules refer to them by name",
    )


class WorkflowSettings(_Section):
    enabled: bool = True
    system_database_url: str | None = Field(
        None, description="DBOS system database; default: a SQLite file in data_dir"
    )
    executor_id: str = Field("local", min_length=1, max_length=128)
    # "2": the event workflow's steps changed (evaluate / act_in_order); see the operations
    # guide's upgrade section before changing it again.
    application_version: str = Field("2", min_length=1, max_length=64)
    worker_concurrency: int = Field(16, ge=1, le=256)
    org_concurrency: int | None = Field(
        None, ge=1, le=256,
        description="most workflows of one org that one worker runs at once, so that an org "
        "whose Okta or connectors are slow cannot take every slot (default: worker_concurrency "
        "with one org, half of it with several)",
    )
    relay_interval_seconds: float = Field(0.5, gt=0, le=60)
    queue_polling_seconds: float = Field(0.1, gt=0, le=60)
    heartbeat_seconds: float = Field(
        5.0, gt=0, le=300, description="how often a worker records that it is alive"
    )
    dead_after_seconds: float = Field(
        30.0, gt=0, le=86_400,
        description="a worker whose heartbeat has not changed for this long is dead: a live "
        "worker of the same application version takes over its in-flight workflows",
    )
    take_over_dead_workers: bool = Field(
        True, description="take over the in-flight workflows of dead workers (off: they wait "
        "for a process with the dead worker's executor_id)",
    )
    max_takeovers_per_workflow: int = Field(
        3, ge=1, le=1000,
        description="a workflow taken over this many times in a row without completing a step "
        "is not resumed again when its worker dies: it is cancelled and recorded as abandoned",
    )

    @model_validator(mode="after")
    def _dead_after_spans_heartbeats(self) -> WorkflowSettings:
        if self.dead_after_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(
                "dead_after_seconds must be at least twice heartbeat_seconds, or a worker "
                "that misses one heartbeat is taken for dead"
            )
        if self.org_concurrency is not None and self.org_concurrency > self.worker_concurrency:
            raise ValueError(
                f"org_concurrency ({self.org_concurrency}) cannot exceed worker_concurrency "
                f"({self.worker_concurrency})"
            )
        return self

    def org_share(self, orgs: int) -> int:
        """Workflow slots of one worker that one org may hold at once."""
        if self.org_concurrency is not None:
            return self.org_concurrency
        return self.worker_concurrency if orgs <= 1 else max(1, self.worker_concurrency // 2)


class LogSettings(_Section):
    format: Literal["json", "text"] = "json"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    hash_user_ids: bool = Field(
        False, description="log user ids and logins as keyed hashes (privacy-sensitive sites)"
    )


class OidcSettings(_Section):
    """Dashboard sign-in through an OpenID Connect provider (Okta): the authorization code
    flow with PKCE. Configured when ``issuer`` and ``client_id`` are set."""

    issuer: str | None = Field(
        None, description="e.g. https://example.okta.com/oauth2/default (discovery is read "
        "from <issuer>/.well-known/openid-configuration)",
    )
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    scopes: tuple[str, ...] = ("openid", "profile", "email", "groups")
    groups_claim: str = "groups"
    viewer_groups: tuple[str, ...] = Field(
        (), description="may view the dashboard; empty: anyone the provider signs in"
    )
    operator_groups: tuple[str, ...] = Field(
        (), description="may also retry and discard dead letters; empty: nobody via OIDC"
    )
    label: str = Field("Okta", min_length=1, max_length=40)
    allow_http_issuer: bool = Field(
        False, description="accept an http:// issuer on a loopback address (local test servers)"
    )


class UiSettings(_Section):
    """The dashboard under /ui. Sign-in: the local admin (a password or its hash; without
    either and without OIDC, a password is generated into data_dir) and/or OIDC."""

    enabled: bool = True
    admin_username: str = Field("admin", min_length=1, max_length=64)
    admin_password: SecretStr | None = None
    admin_password_file: Path | None = None
    admin_password_hash: SecretStr | None = Field(
        None, description="pbkdf2_sha256$<iterations>$<salt>$<hash> "
        "(python -m factorflow.web.ui.passwords)",
    )
    session_secret: SecretStr | None = None
    session_secret_file: Path | None = None
    session_max_age_seconds: int = Field(8 * 3600, ge=60, le=7 * 24 * 3600)
    cookie_secure: bool = Field(
        True, description="Secure cookies; browsers accept them on https and on localhost"
    )
    public_url: str | None = Field(
        None, description="the dashboard's external base URL (https://host), for OIDC "
        "redirects; default: taken from each request",
    )
    cache_seconds: float = Field(
        30.0, ge=0, le=3600, description="how long overview and report figures are reused"
    )
    oidc: OidcSettings = OidcSettings()


class CampaignSettings(_Section):
    """A migration campaign: a population (a group of the org's directory file) that must
    enroll a required authenticator. The ``checkpoint`` action with ``campaign: <name>``
    marks each user complete."""

    description: str = ""
    org: str | None = Field(None, description="default: the first org")
    population_group: str = Field(
        ..., min_length=1, description="a group name (or id) in the org's directory file"
    )
    required_strength: tuple[str, ...] = Field(
        (), description="strength classes that complete it (documentation)"
    )
    required_factor_types: tuple[str, ...] = Field(
        (), description="factor types that complete it (documentation)"
    )
    deadline: date | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data_dir: Path = Path("factorflow-data")
    server: ServerSettings = ServerSettings()
    metrics: MetricsSettings = MetricsSettings()
    hook: HookSettings = HookSettings()
    store: StoreSettings = StoreSettings()
    pipeline: PipelineSettings = PipelineSettings()
    actions: ActionSettings = ActionSettings()
    okta: OktaApiSettings | None = Field(
        None, description="[okta]: the org's API (single-org deployments; else [orgs.<n>.okta])"
    )
    orgs: dict[str, OrgSettings] = Field(
        default_factory=dict, description="[orgs.<name>] sections for several Okta orgs"
    )
    connectors: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        repr=False,  # raw sections hold passwords and tokens until each connector validates them
        description="[connectors.<kind>] sections; each connector validates its own keys",
    )
    workflows: WorkflowSettings = WorkflowSettings()
    log: LogSettings = LogSettings()
    ui: UiSettings = UiSettings()
    campaigns: dict[str, CampaignSettings] = Field(
        default_factory=dict, description="[campaigns.<name>] migration campaigns"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The config file arrives as init arguments; the environment overrides it.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _orgs_are_distinct(self) -> Settings:
        paths: dict[str, str] = {}
        for org in self.org_list():
            if not _ORG_NAME.match(org.name):
                raise ValueError(f"org name {org.name!r}: use letters, digits, '-' and '_'")
            if org.hook.path in paths:
                raise ValueError(
                    f"orgs {paths[org.hook.path]!r} and {org.name!r} share the hook path "
                    f"{org.hook.path}"
                )
            paths[org.hook.path] = org.name
        return self

    @model_validator(mode="after")
    def _metrics_port_is_usable(self) -> Settings:
        metrics = self.metrics
        if metrics.port == self.server.port and self.metrics_host() == self.server.host:
            raise ValueError(
                f"metrics.port {metrics.port} is server.port: give the metrics a port of "
                "their own, or leave metrics.port unset to serve /metrics on the main port"
            )
        return self

    def metrics_host(self) -> str:
        return self.metrics.host or self.server.host

    def org_list(self) -> list[Org]:
        """Every configured org with its hook, rules and directory."""
        if not self.orgs:
            return [Org(self.hook.org, self.hook, self.pipeline.rules_file,
                        self.pipeline.directory_file, "hook-secret", self.okta)]
        return [
            Org(name, org.hook, org.rules_file, org.directory_file, f"hook-secret-{name}",
                org.okta)
            for name, org in sorted(self.orgs.items())
        ]

    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.data_dir / 'factorflow.db'}"

    def workflow_db_url(self) -> str:
        return self.workflows.system_database_url or f"sqlite:///{self.data_dir / 'dbos.sqlite'}"


def load_settings(config: Path | None) -> Settings:
    """Read the config file (if any) and the environment; raise ConfigError naming bad keys."""
    data: dict[str, Any] = {}
    if config is not None:
        try:
            data = tomllib.loads(config.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {config} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{config}: cannot read: {exc.strerror}") from None
    unknown = unknown_environment()
    if unknown:
        raise ConfigError(
            "unknown environment variable(s): " + ", ".join(map(_with_suggestion, unknown))
            + f" (settings are {ENV_PREFIX}<SECTION>__<KEY>, with two underscores)"
        )
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config, data)) from None


# Variables with the prefix that are not settings.
_OTHER_VARIABLES = ("FACTORFLOW_CONFIG",)
_OTHER_PREFIXES = ("FACTORFLOW_TEST_", "FACTORFLOW_BENCH_")


def _is_section(annotation: Any) -> bool:
    """A model or a mapping (possibly optional): its keys come as SECTION__KEY."""
    candidates = [annotation, *get_args(annotation)]
    return any(
        (isinstance(c, type) and issubclass(c, BaseModel)) or get_origin(c) is dict
        for c in candidates
    )


def unknown_environment() -> list[str]:
    """FACTORFLOW_ variables that name no setting: a typo such as FACTORFLOW_HOOK_SECRET
    (one underscore) would otherwise be ignored and a secret generated instead."""
    sections = {
        name.upper() for name, field in Settings.model_fields.items()
        if _is_section(field.annotation)
    }
    top = {name.upper() for name in Settings.model_fields} - sections
    unknown = []
    for variable in os.environ:
        if not variable.startswith(ENV_PREFIX) or variable in _OTHER_VARIABLES:
            continue
        if variable.startswith(_OTHER_PREFIXES):
            continue
        rest = variable.removeprefix(ENV_PREFIX)
        section, separator, _key = rest.partition("__")
        if (separator and section in sections) or (not separator and rest in top):
            continue
        unknown.append(variable)
    return sorted(unknown)


def _with_suggestion(variable: str) -> str:
    """``FACTORFLOW_HOOK_SECRET (did you mean FACTORFLOW_HOOK__SECRET?)``: the closest setting
    name, when one is close enough."""
    close = difflib.get_close_matches(variable.upper(), setting_variables(), n=1, cutoff=0.8)
    return f"{variable} (did you mean {close[0]}?)" if close else variable


def setting_variables() -> list[str]:
    """Every environment variable name that sets one setting, as far as they can be listed
    (the keys of mappings such as ``[orgs.<name>]`` are free, so their contents are not)."""
    names = list(_OTHER_VARIABLES)

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            variable = f"{prefix}{name.upper()}"
            nested = [
                c for c in (field.annotation, *get_args(field.annotation))
                if isinstance(c, type) and issubclass(c, BaseModel)
            ]
            if nested:
                walk(nested[0], variable + "__")
            elif get_origin(field.annotation) is not dict:
                names.append(variable)

    walk(Settings, ENV_PREFIX)
    return names


def _describe(exc: ValidationError, config: Path | None, data: dict[str, Any]) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple(str(part) for part in error["loc"])
        if not loc:
            # A check across sections (e.g. two orgs on one hook path): its values may come
            # from anywhere, so no single source is named.
            lines.append(f"  {error['msg']}")
            continue
        key = ".".join(loc)
        where = _source(loc, config, data, missing=error["type"] == "missing")
        lines.append(f"  {key}: {error['msg']} (from {where})")
    return "\n".join(lines)


def _source(loc: tuple[str, ...], config: Path | None, data: dict[str, Any], *,
            missing: bool) -> str:
    """Where the value(s) at ``loc`` came from. The environment wins over the file key by key,
    so a variable naming exactly this key is the only source; a check over a whole section (a
    model validator) names every variable under it, and the file if it sets the section. A
    missing key is blamed on whatever set the section that lacks it."""
    if missing and len(loc) > 1:
        loc = loc[:-1]
    env_name = ENV_PREFIX + "__".join(part.upper() for part in loc)
    present = {name.upper() for name in os.environ}
    if env_name in present and not missing:
        return f"environment variable {env_name}"
    sources = [
        f"environment variable {name}" for name in sorted(present)
        if name.startswith(env_name + "__")
    ]
    if config is not None and _in_file(data, loc):
        sources.append(str(config))
    return " and ".join(sources) if sources else "defaults"


def _in_file(data: dict[str, Any], loc: tuple[str, ...]) -> bool:
    node: Any = data
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
