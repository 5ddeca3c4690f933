"""The feature store: teacher features written once, read by index."""

from dsmd.store.feature_store import FeatureStore, SplitFeatures, write_split

__all__ = ["FeatureStore", "SplitFeatures", "write_split"]
