import pytest
from PIL import Image

from dsmd.export.writer import export_student
from students import train_tiny


@pytest.fixture(scope="session")
def searchable(tiny_models, synthetic_manifest, tmp_path_factory):
    """A tiny trained student, exported, and its store (for the teacher's gallery)."""
    run = train_tiny(tiny_models, synthetic_manifest, tmp_path_factory.mktemp("searchable"), "student.text_pooling=cls")
    export_student(run["checkpoint"], run["root"] / "export", log=lambda *_: None)
    return {**run, "export": run["root"] / "export", "images": run["root"].parent}


@pytest.fixture(scope="module")
def gallery(searchable, tmp_path_factory):
    """Three coloured squares in two folders (``photos/a``: red, green; ``photos/b``: blue), indexed."""
    import dsmd
    from dsmd.search.build import index_images

    root = tmp_path_factory.mktemp("served")
    colours = {"a/red": (220, 20, 20), "a/green": (20, 180, 40), "b/blue": (30, 40, 220)}
    for name, colour in colours.items():
        (root / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), colour).save(root / "photos" / f"{name}.png")
    encoder = dsmd.load_student(searchable["export"])
    folders = [str(root / "photos" / "a"), str(root / "photos" / "b")]
    index = index_images(root / "index", encoder, folders, progress=False, log=lambda *_: None)
    return {"root": root, "index": index, "encoder": encoder, "export": searchable["export"]}


@pytest.fixture(scope="module")
def served(gallery):
    """``dsmd serve`` over the gallery, in a thread of this process, with the default limits."""
    from serving import running

    from dsmd.search.server import SearchService

    with running(SearchService(gallery["index"], gallery["encoder"])) as server:
        yield {**gallery, **server}
