"""The results dataset, the sweep's source of truth (no torch needed to read it).

``schema`` holds the columns, ``store`` the atomic writers and the readers and queries,
``rows`` the one builder of an attempt's row, ``artifacts`` the saved models.
"""

from lipsweep.results.schema import ATTEMPT_SCHEMA, HISTORY_SCHEMA, METRICS, PARTITIONS
from lipsweep.results.store import (
    attempt_status,
    cell_attempts,
    ended_for_good,
    partition_dir,
    read_attempts,
    read_history,
    read_partitioned,
    write_attempt,
    write_partitioned,
)

__all__ = [
    "ATTEMPT_SCHEMA",
    "HISTORY_SCHEMA",
    "METRICS",
    "PARTITIONS",
    "attempt_status",
    "cell_attempts",
    "ended_for_good",
    "partition_dir",
    "read_attempts",
    "read_history",
    "read_partitioned",
    "write_attempt",
    "write_partitioned",
]
