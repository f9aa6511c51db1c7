"""The one root exception and the few subclasses callers act on differently."""


class FactorflowError(Exception):
    """Root of every error factorflow raises on purpose."""


class RejectedDelivery(FactorflowError):
    """A hook request that is refused as a whole; nothing of it is stored.

    ``status`` is the HTTP status the edge answers with; ``message`` is safe to show the caller
    (it never contains a secret or a payload).
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class StoreUnavailable(FactorflowError):
    """The event store could not commit; the caller must not acknowledge the delivery."""


class ConfigError(FactorflowError):
    """The configuration is invalid; the message names the key and why."""
