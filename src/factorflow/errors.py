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


class ActionError(FactorflowError):
    """An action could not be carried out."""


class TransientActionError(ActionError):
    """Worth retrying: timeouts, connection errors, 429 (``retry_after`` seconds), 5xx."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentActionError(ActionError):
    """Retrying will not help (other 4xx, invalid configuration): dead-letter it."""


class InvalidRules(FactorflowError):
    """The rules file is invalid; ``problems`` each name the file, the rule and the field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
