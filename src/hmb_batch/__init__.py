"""hmb-batch: batch claims for city-customised supplementary medical insurance (惠民保)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hmb-batch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"
