"""Pipelines that fill a feature store: running a teacher over a dataset
(:func:`~dsmd.extraction.extract.extract`), importing features computed elsewhere
(:func:`~dsmd.extraction.importer.import_features`), and copying webdataset shards with the
teacher's features beside each sample (:func:`~dsmd.extraction.webdataset_teacher.write_teacher_shards`).
"""

from dsmd.extraction.extractor import extract
from dsmd.extraction.importer import import_features
from dsmd.extraction.webdataset_teacher import write_teacher_shards

__all__ = ["extract", "import_features", "write_teacher_shards"]
