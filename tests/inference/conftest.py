import pytest

from dsmd.export.writer import export_student
from students import train_tiny


@pytest.fixture(scope="session")
def paper_like(tiny_models, synthetic_manifest, tmp_path_factory):
    """ViT + BERT with CLS pooling (the paper's student, tiny), exported with ONNX."""
    run = train_tiny(tiny_models, synthetic_manifest, tmp_path_factory.mktemp("paper_like"), "student.text_pooling=cls")
    messages = []
    export_student(run["checkpoint"], run["root"] / "export", onnx=True, log=messages.append)
    return {**run, "export": run["root"] / "export", "messages": messages}
