"""The feature store: the teacher's features, written once and read by index.

The format lives here (:mod:`~dsmd.store.feature_store` reads, :mod:`~dsmd.store.writer`
writes, :mod:`~dsmd.store.manifest` and :mod:`~dsmd.store.integrity` check); the pipelines
that fill a store (running a teacher, importing features) are in :mod:`dsmd.extraction`.
"""

from dsmd.store.feature_store import FeatureStore
from dsmd.store.manifest import FORMAT_VERSION, MANIFEST
from dsmd.store.split_features import SplitFeatures
from dsmd.store.writer import StoreWriter, write_split

__all__ = ["FORMAT_VERSION", "MANIFEST", "FeatureStore", "SplitFeatures", "StoreWriter", "write_split"]
