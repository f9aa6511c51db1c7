"""``factorflow simulate``: a local Okta org to develop and test against, without an Okta tenant.

* ``simulate serve``: the org's management API (users, groups, factors, authenticator
  enrollments, System Log, group membership, OAuth token endpoint) and its OpenID Connect
  authorization servers (``--oidc-client-id``: sign-in with Okta for the dashboard) on a local
  port; with ``--hook-url`` it also delivers the generated MFA events to a receiver, as Okta's
  event hook would (drops, duplicates and reordering on request), and can keep generating
  (``--every``).
* ``simulate send URL``: only the event hook side, for a receiver at URL.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from factorflow.okta.simulator.constants import ALL_SCOPES, DEFAULT_HOOK_EVENT_TYPES

if TYPE_CHECKING:
    from factorflow.okta.simulator.org import OrgEngine

ENGINES = ("mixed", "classic", "identity_engine")


def _org_options(command: Any) -> Any:
    for option in reversed((
        click.option("--users", type=click.IntRange(3, 100_000), default=50, show_default=True,
                     help="Users in the generated org."),
        click.option("--seed", type=int, default=1, show_default=True,
                     help="Same seed, same org and events."),
        click.option("--engine", type=click.Choice(ENGINES), default="mixed", show_default=True,
                     help="Shape of the MFA events: Classic, Identity Engine or both."),
        click.option("--enrollments", "--events", "enrollments",
                     type=click.IntRange(0, 1_000_000), default=20,
                     show_default=True,
                     help="Factor enrollments to generate (an Identity Engine phone enrollment "
                          "is two activate events; related events come on top)."),
    )):
        command = option(command)
    return command


def _hook_options(command: Any) -> Any:
    for option in reversed((
        click.option("--auth-header", default="Authorization", show_default=True,
                     help="Header that carries the hook secret."),
        click.option("--batch", type=click.IntRange(1, 1000), default=10, show_default=True,
                     help="Events per delivery."),
        click.option("--drop", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                     help="Share of deliveries never sent (they stay in the System Log)."),
        click.option("--duplicate", type=click.FloatRange(0, 1), default=0.0,
                     show_default=True, help="Share of deliveries sent twice."),
        click.option("--reorder", is_flag=True, help="Shuffle deliveries and their events."),
        click.option("--delay", type=click.FloatRange(0, 60), default=0.0, show_default=True,
                     help="Random pause of up to this many seconds before each delivery."),
        click.option("--timeout", type=click.FloatRange(0.1, 60), default=3.0,
                     show_default=True, help="Per-request timeout (Okta: 3 s)."),
        click.option("--hook-quirks/--no-hook-quirks", default=True, show_default=True,
                     help="Give hook copies of events the keys real hook payloads have "
                          "(client.ipChain, insertionTimestamp), unlike the System Log copy."),
        click.option("--event-type", "event_types", multiple=True,
                     default=DEFAULT_HOOK_EVENT_TYPES, show_default=True,
                     help="Event types the hook subscribes to (repeatable)."),
    )):
        command = option(command)
    return command


@click.group()
def simulate() -> None:
    """A local Okta org: management API and event hook sender, for development and tests."""


@simulate.command("serve")
@_org_options
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8081, show_default=True)
@click.option("--api-token", "api_tokens", multiple=True,
              help="Accept 'Authorization: SSWS <token>' (repeatable). Without any token or "
                   "--client-id a token is generated and printed.")
@click.option("--client-id", default=None, help="Register an OAuth service app with this id.")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="The service app's key: PEM (public or private) or JWK.")
@click.option("--kid", default=None, help="Key id of --public-key (default: the JWK's kid).")
@click.option("--grant-scope", "scopes", multiple=True, default=ALL_SCOPES, show_default=True,
              help="Scopes granted to the service app (repeatable).")
@click.option("--rate-limit", "rate_limits", multiple=True, metavar="BUCKET=N",
              help="Requests per window for a bucket, e.g. /api/v1/logs=20 (repeatable).")
@click.option("--rate-limit-window", type=click.FloatRange(1, 3600), default=60.0,
              show_default=True, help="Seconds per rate-limit window.")
@click.option("--latency", type=click.FloatRange(0, 30), default=0.0, show_default=True,
              help="Seconds added to every API answer.")
@click.option("--oidc-client-id", default=None,
              help="Register an OIDC web app (authorization code flow with PKCE).")
@click.option("--oidc-client-secret", default=None,
              help="Its client secret (default: generated and printed).")
@click.option("--oidc-client-secret-file", type=click.Path(exists=True, dir_okay=False,
                                                           path_type=Path), default=None)
@click.option("--oidc-public", is_flag=True, help="The app is a public client (no secret).")
@click.option("--oidc-redirect-uri", "redirect_uris", multiple=True,
              help="A sign-in redirect URI of the app (repeatable; at least one).")
@click.option("--sign-in-as", default=None,
              help="Who the authorization server signs in when a request names nobody "
                   "(login_hint): a login, a user id or a user's number (0 is the org's "
                   "first user, its Okta administrator, the default).")
@click.option("--member", "memberships", multiple=True, metavar="GROUP=USER",
              help="Put USER (login, id or number) in GROUP, made if missing (repeatable), "
                   "e.g. the dashboard's viewer or operator group.")
@click.option("--hook-url", default=None, help="Also deliver the events to this receiver.")
@click.option("--hook-secret", default=None, help="Value of the hook's auth header.")
@click.option("--hook-secret-file", type=click.Path(exists=True, dir_okay=False,
                                                    path_type=Path), default=None)
@_hook_options
@click.option("--every", type=click.FloatRange(0.1, 86_400), default=None,
              help="Generate (and deliver) --enrollments more every this many seconds.")
def serve(users: int, seed: int, engine: str, enrollments: int, host: str, port: int,
          api_tokens: tuple[str, ...], client_id: str | None, public_key: Path | None,
          kid: str | None, scopes: tuple[str, ...], rate_limits: tuple[str, ...],
          rate_limit_window: float, latency: float, oidc_client_id: str | None,
          oidc_client_secret: str | None, oidc_client_secret_file: Path | None,
          oidc_public: bool, redirect_uris: tuple[str, ...], sign_in_as: str | None,
          memberships: tuple[str, ...], hook_url: str | None,
          hook_secret: str | None, hook_secret_file: Path | None, auth_header: str, batch: int,
          drop: float, duplicate: float, reorder: bool, delay: float, timeout: float,
          hook_quirks: bool, event_types: tuple[str, ...], every: float | None) -> None:
    """Serve a generated org's management API on HOST:PORT."""
    import uvicorn

    from factorflow.okta.simulator import (
        OAuthApp,
        OidcApp,
        OktaSimulator,
        SimulatorConfig,
        generate_org,
    )
    from factorflow.okta.simulator.events import api_actor

    apps: tuple[OAuthApp, ...] = ()
    if (client_id is None) != (public_key is None):
        raise click.UsageError("--client-id and --public-key go together")
    if client_id is not None and public_key is not None:
        key, key_id = _load_public_key(public_key)
        apps = (OAuthApp(client_id, {kid or key_id: key}, tuple(scopes)),)
    oidc_apps: tuple[OidcApp, ...] = ()
    generated_secret = False
    if oidc_client_id is not None:
        if not redirect_uris:
            raise click.UsageError("--oidc-client-id needs at least one --oidc-redirect-uri")
        client_secret = _secret(oidc_client_secret, oidc_client_secret_file)
        if oidc_public and client_secret is not None:
            raise click.UsageError("a public client (--oidc-public) has no secret")
        if client_secret is None and not oidc_public:
            client_secret, generated_secret = secrets.token_urlsafe(30), True
        oidc_apps = (OidcApp(oidc_client_id, client_secret, tuple(redirect_uris)),)
    elif redirect_uris or oidc_public or oidc_client_secret or oidc_client_secret_file:
        raise click.UsageError("the --oidc-* options need --oidc-client-id")
    if not api_tokens and not apps:
        api_tokens = (secrets.token_urlsafe(24),)
    secret = _secret(hook_secret, hook_secret_file) if hook_url else None
    if hook_url and secret is None:
        raise click.UsageError("--hook-url needs --hook-secret or --hook-secret-file")
    org = generate_org(users, seed, engine=_engine(engine))
    org.generate_enrollments(enrollments, seed)
    for membership in memberships:
        group_name, _, who = membership.rpartition("=")
        if not group_name:
            raise click.BadParameter(f"{membership!r}: expected GROUP=USER",
                                     param_hint="--member")
        member = _user(org, who, "--member")
        group = org.add_group(group_name, "made by factorflow simulate serve --member")
        org.set_membership(group.id, member.id, True, api_actor(org.api_admin.ref(),
                                                                api_token_id=org.api_token_id))
    default_user = _user(org, sign_in_as, "--sign-in-as") if sign_in_as else org.api_admin
    simulator = OktaSimulator(org, SimulatorConfig(
        api_tokens=api_tokens, oauth_apps=apps, rate_limits=_rate_limits(rate_limits),
        rate_limit_window_seconds=rate_limit_window, latency_seconds=latency,
        oidc_apps=oidc_apps, sign_in_as=default_user.id,
    ))
    base = f"http://{host}:{port}"
    privileged = org.group_named("Privileged Access")
    click.echo(f"simulated Okta org on {base}: {len(org.users)} users, {len(org.groups)} "
               f"groups, {len(org.log)} System Log events", err=True)
    for token in api_tokens:
        click.echo(f"  API token: {token}   (Authorization: SSWS {token})", err=True)
    for app in apps:
        click.echo(f"  OAuth service app: {app.client_id}, token URL {base}/oauth2/v1/token, "
                   f"scopes {' '.join(app.scopes)}", err=True)
    click.echo(f"  group 'Privileged Access': {privileged.id}", err=True)
    for oidc_app in oidc_apps:
        click.echo(f"  OIDC app: {oidc_app.client_id}, issuer {base}/oauth2/default (or the "
                   f"org's, {base}), redirect URIs {' '.join(oidc_app.redirect_uris)}",
                   err=True)
        if generated_secret:
            click.echo(f"  OIDC client secret: {oidc_app.client_secret}", err=True)
        click.echo(f"  signs in: {default_user.login} (groups: "
                   f"{', '.join(org.groups[g].name for g in default_user.group_ids)}), or "
                   f"the user named by login_hint", err=True)
    server = uvicorn.Server(uvicorn.Config(
        simulator.app, host=host, port=port, log_level="warning", access_log=False,
        lifespan="off", date_header=False, server_header=False,
    ))
    if hook_url and secret is not None:
        from factorflow.okta.simulator import HookSender, SendOptions

        sender = HookSender(hook_url, secret=secret, auth_header=auth_header, org_url=base,
                            timeout_seconds=timeout)
        options = SendOptions(batch_size=batch, drop=drop, duplicate=duplicate,
                              reorder=reorder, max_delay_seconds=delay, seed=seed,
                              hook_quirks=hook_quirks)
        threading.Thread(target=_deliver_forever, daemon=True, name="hook-sender", kwargs={
            "server": server, "org": org, "sender": sender, "options": options,
            "event_types": event_types, "enrollments": enrollments, "every": every,
        }).start()
    elif every is not None:
        threading.Thread(target=_generate_forever, daemon=True, name="generator",
                         args=(org, enrollments, every)).start()
    server.run()


@simulate.command("send")
@click.argument("url")
@click.option("--secret", default=None, help="Value of the hook's auth header.")
@click.option("--secret-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="File holding the value of the hook's auth header.")
@_org_options
@_hook_options
def send(url: str, secret: str | None, secret_file: Path | None, users: int, seed: int,
         engine: str, enrollments: int, auth_header: str, batch: int, drop: float,
         duplicate: float, reorder: bool, delay: float, timeout: float, hook_quirks: bool,
         event_types: tuple[str, ...]) -> None:
    """Play Okta's event hook against the receiver at URL: verification, then deliveries."""
    from factorflow.okta.simulator import (
        HookSender,
        SendFailed,
        SendOptions,
        generate_org,
        subscribed,
    )

    value = _secret(secret, secret_file)
    if value is None:
        raise click.UsageError("give --secret or --secret-file")
    org = generate_org(users, seed, engine=_engine(engine))
    events = subscribed(org.generate_enrollments(enrollments, seed), event_types)
    sender = HookSender(url, secret=value, auth_header=auth_header, timeout_seconds=timeout)
    try:
        sender.verify()
    except SendFailed as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"verification: OK ({url} echoed the challenge)")
    summary = sender.send(events, SendOptions(
        batch_size=batch, drop=drop, duplicate=duplicate, reorder=reorder,
        max_delay_seconds=delay, seed=seed, hook_quirks=hook_quirks,
    ))
    for line in summary.lines():
        click.echo(line)
    if summary.failed:
        raise click.ClickException(f"{summary.failed} deliveries were not acknowledged")


def _deliver_forever(*, server: Any, org: Any, sender: Any, options: Any,
                     event_types: tuple[str, ...], enrollments: int,
                     every: float | None) -> None:
    from factorflow.okta.simulator import SendFailed, subscribed

    while not server.started:
        time.sleep(0.05)
    try:
        sender.verify()
    except SendFailed as exc:
        click.echo(f"hook: verification failed, nothing delivered: {exc}", err=True)
        return
    events = subscribed(org.events(), event_types)
    while True:
        summary = sender.send(events, options)
        click.echo("hook: " + "; ".join(summary.lines()), err=True)
        if every is None:
            return
        time.sleep(every)
        events = subscribed(org.generate_enrollments(enrollments), event_types)


def _generate_forever(org: Any, enrollments: int, every: float) -> None:
    while True:
        time.sleep(every)
        org.generate_enrollments(enrollments)


def _user(org: Any, who: str, option: str) -> Any:
    """A user of the simulated org by login, id or number (0: the first user)."""
    found = org.user(who)
    if found is None and who.isdigit() and int(who) < len(org.users):
        found = list(org.users.values())[int(who)]
    if found is None:
        raise click.BadParameter(f"no user {who!r} in the simulated org", param_hint=option)
    return found


def _engine(value: str) -> OrgEngine:
    if value == "classic":
        return "classic"
    if value == "identity_engine":
        return "identity_engine"
    return "mixed"


def _secret(value: str | None, path: Path | None) -> str | None:
    if value is not None and path is not None:
        raise click.UsageError("give the secret or a secret file, not both")
    if path is not None:
        return path.read_text(encoding="utf-8").strip()
    return value


def _rate_limits(values: tuple[str, ...]) -> dict[str, int]:
    limits: dict[str, int] = {}
    for value in values:
        bucket, _, number = value.rpartition("=")
        if not bucket.startswith("/") or not number.isdigit():
            raise click.BadParameter(f"{value!r}: expected BUCKET=N, e.g. /api/v1/logs=20",
                                     param_hint="--rate-limit")
        limits[bucket] = int(number)
    return limits


def _load_public_key(path: Path) -> tuple[Any, str | None]:
    """A public key from a PEM (public or private key) or a JWK file; (key, kid)."""
    import jwt
    from cryptography.hazmat.primitives import serialization

    data = path.read_bytes()
    try:
        if data.lstrip().startswith(b"{"):
            document = json.loads(data)
            key: Any = jwt.PyJWK(document).key
            kid = document.get("kid")
        elif b"PRIVATE KEY" in data:
            key, kid = serialization.load_pem_private_key(data, password=None), None
        else:
            key, kid = serialization.load_pem_public_key(data), None
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise click.BadParameter(f"{path}: not a usable key ({exc})",
                                 param_hint="--public-key") from None
    if hasattr(key, "public_key"):
        key = key.public_key()
    return key, kid if isinstance(kid, str) else None


if __name__ == "__main__":  # pragma: no cover - ``python -m factorflow.cli_okta``
    simulate()
