"""The built-in actions (audit, checkpoint, register, report, webhook) and their storage.

Each handler is idempotent by the request's idempotency key; see ``base.ActionHandler``.
"""

from factorflow.actions.base import ActionHandler, ActionStore
from factorflow.actions.registry import BUILTIN_KINDS, ActionRegistry, builtin_registry

__all__ = ["BUILTIN_KINDS", "ActionHandler", "ActionRegistry", "ActionStore", "builtin_registry"]
