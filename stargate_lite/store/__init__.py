"""The one package that owns SQLite: the schema as named migrations, and every read and write of records.

`Store` is a project home's store: the core (store/core.py: the file, its transactions and write lock) with one
mixin per family of tables, each in its own module (runs and stages, data, conversations and training records,
evaluations, a run's export reads). Callers import what they need from here, and call the store's named methods;
no SQL is written outside this package (tests/test_layout.py checks it).
"""

from __future__ import annotations

from .browse import BROWSE_QUERIES, TABLE_NOTES
from .conversations import ConversationRecords
from .core import BUSY_TIMEOUT_S, DB_NAME, LOCK_NOTICE_S, VARIABLES_PER_QUERY, default_home, lock_timeout, store_error
from .data import DataRecords
from .evaluations import EvaluationRecords
from .exports import ExportReads
from .migrations import MIGRATIONS
from .runs import RunRecords

__all__ = ["BROWSE_QUERIES", "BUSY_TIMEOUT_S", "DB_NAME", "LOCK_NOTICE_S", "MIGRATIONS", "TABLE_NOTES",
           "VARIABLES_PER_QUERY", "Store", "default_home", "lock_timeout", "store_error"]


class Store(RunRecords, DataRecords, ConversationRecords, EvaluationRecords, ExportReads):
    """A project home's SQLite file with every family's reads and writes (opening it: StoreCore). Cheap to open;
    safe to read while a run writes (WAL)."""
