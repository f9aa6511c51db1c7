"""``[okta]`` settings: where the org is and how factorflow authenticates to it. Kept apart
from the client so that reading the configuration does not import the HTTP and JWT stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

DEFAULT_SCOPES = ("okta.users.read", "okta.groups.read", "okta.logs.read")
SYSTEM_LOG_RETENTION_HOURS = 90 * 24  # Okta returns nothing older than 90 days
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
TOKEN_PATH = "/oauth2/v1/token"  # noqa: S105 - a URL path, not a secret


class OktaApiSettings(BaseModel):
    """``[okta]``: where the org is and how factorflow authenticates to it.

    Exactly one of: ``api_token`` / ``api_token_file`` (SSWS), or ``client_id`` +
    ``private_key_file`` (+ ``key_id``) for an OAuth 2.0 service app with ``private_key_jwt``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    org_url: str = Field(description="https://<your-org>.okta.com (no path)")
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    client_id: str | None = None
    private_key_file: Path | None = Field(None, description="PEM (PKCS#8/PKCS#1/SEC1) or JWK")
    private_key_passphrase: SecretStr | None = None
    key_id: str | None = Field(None, description="kid of the key registered with the app")
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    connect_timeout_seconds: float = Field(5.0, gt=0, le=120)
    timeout_seconds: float = Field(
        30.0, gt=0, le=300, description="read/write timeout; Okta ends a log query at 30 s"
    )
    max_concurrency: int = Field(10, ge=1, le=75)
    slowdown_below: float = Field(
        0.1, ge=0, lt=1,
        description="when less than this share of a bucket is left, spread the rest evenly",
    )
    max_wait_seconds: float = Field(
        60.0, ge=0, le=3600,
        description="longest total rate-limit wait per call before giving up (transient)",
    )
    allow_http: bool = Field(
        False, description="allow http:// org URLs other than loopback (local simulators only)"
    )
    # -- enrichment (factorflow.enrichment.okta) and reconciliation (factorflow.okta.reconcile)
    enrich: bool = Field(True, description="look users up in Okta for each decision")
    enrichment_ttl_seconds: float = Field(
        300.0, ge=0, le=86_400,
        description="how long one user's profile, groups and factors are reused (0: never)",
    )
    enrichment_cache_size: int = Field(10_000, ge=1, le=1_000_000, description="users kept")
    enrichment_fallback: Literal["wait", "directory", "none"] = Field(
        "wait", description="when Okta cannot be reached: wait and retry, use the directory "
        "file, or decide without enrichment",
    )
    reconcile_interval_seconds: float = Field(
        60.0, ge=0, le=86_400,
        description="the worker polls the System Log this often (0: no background poller)",
    )
    reconcile_lookback_hours: float = Field(
        24.0, gt=0, le=SYSTEM_LOG_RETENTION_HOURS,
        description="the first poll reads this far back (Okta keeps 90 days)",
    )
    reconcile_page_size: int = Field(1000, ge=1, le=1000, description="events per log page")

    @field_validator("org_url")
    @classmethod
    def _org_url_is_an_origin(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an absolute URL such as https://example.okta.com")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError("must be the org's origin, without a path (https://example.okta.com)")
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("scopes", mode="before")
    @classmethod
    def _scopes_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):  # "okta.users.read okta.logs.read", or comma-separated
            return tuple(part for part in value.replace(",", " ").split() if part)
        return value

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> OktaApiSettings:
        token = self.api_token is not None or self.api_token_file is not None
        oauth = self.client_id is not None or self.private_key_file is not None
        if self.api_token is not None and self.api_token_file is not None:
            raise ValueError("set api_token or api_token_file, not both")
        if token and oauth:
            raise ValueError(
                "set either an API token (api_token / api_token_file) or an OAuth service app "
                "(client_id + private_key_file), not both"
            )
        if not token and not oauth:
            raise ValueError(
                "no credentials: set api_token / api_token_file, or client_id + private_key_file"
            )
        if oauth and (self.client_id is None or self.private_key_file is None):
            raise ValueError("an OAuth service app needs both client_id and private_key_file")
        if oauth and not self.scopes:
            raise ValueError("an OAuth service app needs at least one scope")
        parts = urlsplit(self.org_url)
        if (parts.scheme == "http" and not self.allow_http
                and parts.hostname not in LOOPBACK_HOSTS):
            raise ValueError(f"org_url must use https (got {self.org_url})")
        return self

    @property
    def uses_oauth(self) -> bool:
        return self.client_id is not None

    @property
    def token_url(self) -> str:
        return self.org_url + TOKEN_PATH
