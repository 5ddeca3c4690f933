import pytest

from dsmd.export.writer import export_student
from students import train_tiny


@pytest.fixture(scope="session")
def searchable(tiny_models, synthetic_manifest, tmp_path_factory):
    """A tiny trained student, exported, and its store (for the teacher's gallery)."""
    run = train_tiny(tiny_models, synthetic_manifest, tmp_path_factory.mktemp("searchable"), "student.text_pooling=cls")
    export_student(run["checkpoint"], run["root"] / "export", log=lambda *_: None)
    return {**run, "export": run["root"] / "export", "images": run["root"].parent}
