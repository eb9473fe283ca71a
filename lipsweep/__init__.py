"""lipsweep: 1-Lipschitz layers compared under GPU-hour budgets, as a sweep scheduler."""

from importlib import metadata

try:
    __version__ = metadata.version("lipsweep")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
