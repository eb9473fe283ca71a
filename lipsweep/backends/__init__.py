"""Where a sweep's work runs besides local Ray: SLURM (``lipsweep.backends.slurm``)."""
