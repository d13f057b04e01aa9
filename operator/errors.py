"""Operator error kinds.

    OperatorError
    ├── InvalidResource     a spec the models reject (never retried; resource -> Failed)
    └── Conflict            someone else changed the object first (re-queue)
"""


class OperatorError(Exception):
    """Base of every operator error."""


class InvalidResource(OperatorError):
    """The resource's spec does not validate."""


class Conflict(OperatorError):
    """Optimistic-concurrency conflict; try again with fresh state."""
