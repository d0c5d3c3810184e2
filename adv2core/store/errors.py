"""Store-specific user-facing errors (one-line messages, subclasses of :class:`Adv2Error`)."""

from __future__ import annotations

from adv2core.errors import Adv2Error


class StoreError(Adv2Error):
    """The results store cannot be written or read (unwritable root, failed write, bad unit)."""


class SqlRefused(Adv2Error):
    """A user SQL statement was refused: it is not a read, or it reads outside the results root."""


class QueryError(Adv2Error):
    """A permitted SQL statement failed inside DuckDB (syntax, unknown column, bad types)."""
