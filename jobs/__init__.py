"""What runs inside SLURM jobs: ``jobs.cell.CellJob``, the callable submitit runs for each cell."""
