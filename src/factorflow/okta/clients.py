"""One :class:`~factorflow.okta.api.OktaClient` per org with an ``[okta]`` section, shared by
enrichment, the ``okta_group`` action and the System Log reconciler of that org (one
connection pool and one rate-limit state per org, as Okta counts them)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from factorflow.settings import Org

if TYPE_CHECKING:
    from factorflow.okta.api import OktaClient


class OktaClients(Mapping[str, "OktaClient"]):
    """Clients by org name (a read-only mapping); ``close()`` closes them all."""

    def __init__(self, clients: Mapping[str, OktaClient] | None = None) -> None:
        self._clients = dict(clients or {})

    @classmethod
    def for_orgs(cls, orgs: Iterable[Org]) -> OktaClients:
        """A client for every org that has ``okta`` settings. Reads the API token or private
        key now: ConfigError before anything runs if it cannot."""
        from factorflow.okta.api import OktaClient

        made: dict[str, OktaClient] = {}
        try:
            for org in orgs:
                if org.okta is not None:
                    made[org.name] = OktaClient(org.okta)
        except BaseException:
            for client in made.values():
                client.close()
            raise
        return cls(made)

    def __getitem__(self, org: str) -> OktaClient:
        return self._clients[org]

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> OktaClients:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
