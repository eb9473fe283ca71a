"""The columns of the results dataset: one row per attempt, one row per epoch of history.

Partition columns (sweep, dataset, method) live in the path only, as hive partitioning expects.
"""

from __future__ import annotations

import pyarrow as pa

PARTITIONS = ("sweep", "dataset", "method")
METRICS = ("accuracy", "cra_36", "cra_72", "cra_108", "cra_255", "median_margin")

# The columns of one attempt (partition columns excluded: they are in the path).
ATTEMPT_SCHEMA = pa.schema(
    [
        ("attempt_id", pa.string()),  # <trial_id>-a<attempt>, unique in a sweep
        ("trial_id", pa.string()),  # <stage>-<dataset>-<size>-<method>-<budget>-t<index>
        ("stage", pa.string()),  # "search" or "final"
        ("size", pa.string()),
        ("budget", pa.string()),  # "2h", "24h", ...
        ("budget_s", pa.float64()),
        ("trial_index", pa.int64()),
        ("attempt", pa.int64()),  # 0 for the first try; a NaN run is retried with a new seed
        ("epochs_planned", pa.int64()),
        ("epochs_done", pa.int64()),
        ("resumed_from_epoch", pa.int64()),  # > 0 if the attempt resumed from a checkpoint
        ("lr", pa.float64()),
        ("weight_decay", pa.float64()),
        ("seed", pa.int64()),
        # --search halving: the search trial's rung (0 first; lipsweep.halving). Null in final
        # rows, in random-search rows and in rows written before the column existed.
        ("rung", pa.int64()),
        # The training loss's temperature and offset (lipsweep.loss; searched with --search-space,
        # else the paper's 0.25 and 2 sqrt(2) 36/255). Null in rows written before they existed.
        ("loss_temperature", pa.float64()),
        ("loss_offset", pa.float64()),
        ("batch_size", pa.int64()),
        ("status", pa.string()),  # lipsweep.names.AttemptStatus: completed / nan / oom / failed
        ("error", pa.string()),
        ("eval_split", pa.string()),  # "val" in search, "test" in final
        *[(name, pa.float64()) for name in METRICS],
        # Final stage: the guaranteed Lipschitz bound of the trained eval model
        # (lipsweep.bounds), and the L its CRA were certified with, max(1, bound), on float64
        # logits. Null in search rows: their CRA (float32, L = 1) select trials, certify nothing.
        ("lipschitz_bound", pa.float64()),
        ("certified_lipschitz", pa.float64()),
        # Final stage: max |z32 - z64| over the test logits, the float32 model against the
        # float64 one (a measurement, lipsweep.certify). Null in search rows and in rows
        # written before the column existed (readers fill a missing column with nulls).
        ("float32_logit_deviation", pa.float64()),
        ("seconds_per_epoch", pa.float64()),
        ("calibration", pa.string()),  # how epochs were planned: "measure" or "paper-a100"
        ("train_throughput", pa.float64()),  # examples / s
        ("inference_throughput", pa.float64()),
        ("train_peak_bytes", pa.int64()),
        ("inference_peak_bytes", pa.int64()),
        ("device_seconds", pa.float64()),  # wall time the attempt held its devices
        ("train_seconds", pa.float64()),  # of which training epochs (what the budget buys),
        ("eval_seconds", pa.float64()),  # evaluations,
        ("certify_seconds", pa.float64()),  # and the final certificate
        ("gpus", pa.float64()),  # devices per attempt (0 on CPU)
        ("gpu_hours", pa.float64()),  # device_seconds * max(gpus, 1) / 3600: the ledger entry
        ("device", pa.string()),
        ("versions", pa.string()),  # "python=3.11.7 torch=2.13.0 ..."
        ("git_commit", pa.string()),
        ("host", pa.string()),
        ("slurm_job_id", pa.string()),
        ("slurm_node", pa.string()),  # the SLURM node that ran it (SLURMD_NODENAME)
        ("started_at", pa.timestamp("s", tz="UTC")),
        ("ended_at", pa.timestamp("s", tz="UTC")),
    ]
)
HISTORY_SCHEMA = pa.schema(
    [
        ("attempt_id", pa.string()),
        ("trial_id", pa.string()),
        ("stage", pa.string()),
        ("size", pa.string()),
        ("epoch", pa.int64()),
        ("run", pa.int64()),  # 0: the attempt's first run; n: its n-th resume from a checkpoint
        ("lr", pa.float64()),
        ("train_loss", pa.float64()),
        ("train_accuracy", pa.float64()),
        ("train_seconds", pa.float64()),
        ("eval_seconds", pa.float64()),  # null in epochs without evaluation, as the metrics
        ("train_peak_bytes", pa.int64()),  # measured in the first epoch of each run
        ("inference_peak_bytes", pa.int64()),  # measured in the first evaluation of each run
        *[(name, pa.float64()) for name in METRICS],
        ("loss", pa.float64()),  # offset cross-entropy on the evaluation split
        ("examples", pa.float64()),  # size of the evaluation split
    ]
)
