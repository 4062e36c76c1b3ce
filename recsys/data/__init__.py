"""The data layer: one schema (`schema`), one module per source format (`dat`: ml-1m, `uitem`: ml-100k,
`csvfiles`: CSV layouts), and the cached loader with its splits (`loader`)."""

from recsys.data.loader import DATASETS, SPLITS, load, read_meta
from recsys.data.schema import FEED_NAMES, Meta, MovieLens, Tables

__all__ = ["DATASETS", "FEED_NAMES", "SPLITS", "Meta", "MovieLens", "Tables", "load", "read_meta"]
