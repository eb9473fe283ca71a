"""Ranking and plots of lipsweep results; reads only the Parquet dataset (no torch).

Modules:

- ``load``: sweep folders -> one row per trial (last completed attempt) -> one row per model
  (dataset, budget, method, size).
- ``paper``: the paper's Tables 2, 8 and 9-11 (``data/*.csv``) in the same model-row shape.
- ``ranking``: the paper's top-1 / top-3 / top-10 count and score (rule and tie handling in
  its docstring).
- ``tables``: the Table 2 layout, the sweep - paper delta, rich renderings.
- ``ratings``: the six 1-5 radar ratings of Figure 1.
- ``figures``: radar, speed / memory (Figures 2-4) and CRA-vs-GPU-hours figures, PNG + SVG.
- ``rank_command``: ``run_rank``, the body of ``lipsweep rank``.

The notebook ``notebooks/ranking.ipynb`` shows all of it for one sweep.
"""
