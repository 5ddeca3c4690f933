import pytest
from PIL import Image

from dsmd.export.writer import export_student
from students import train_tiny


@pytest.fixture(scope="session", autouse=True)
def one_faiss_thread():
    """faiss on one thread: its OpenMP threads spin-wait, which costs many times the work on a
    machine whose cores are busy (the search tests' indexes are small)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


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


def many_captions(count: int) -> list[str]:
    """``count`` distinct captions in the tiny tokenizer's words (up to 8,192)."""
    from dsmd.data.synthetic import COLOURS, SHAPES

    colours = list(COLOURS)
    captions = [
        f"a {c1} {s1} and a {c2} {s2} on a {c3} background"
        for c1 in colours
        for s1 in SHAPES
        for c2 in colours
        for s2 in SHAPES
        for c3 in colours
    ]
    return captions[:: len(captions) // count][:count]


@pytest.fixture(scope="session")
def compressed(searchable, tmp_path_factory):
    """An ivfpq index of 1,200 captions in the tiny student's feature space.

    Its vectors are spread around 40 centres rather than the tiny student's own features (which
    are nearly one vector for every caption), so that its recall means something.
    """
    import numpy as np

    import dsmd
    from dsmd.search.index import Index, write_index

    encoder = dsmd.load_student(searchable["export"])
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, encoder.dim))
    vectors = (centres[rng.integers(0, 40, 1200)] + 0.6 * rng.normal(size=(1200, encoder.dim))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [{"id": i, "text": text} for i, text in enumerate(many_captions(1200))]
    root = tmp_path_factory.mktemp("compressed")
    write_index(root / "index", {"kind": "texts", "model": encoder.describe()}, items, vectors, [], "ivfpq")
    return {"root": root, "index": Index.open(root / "index"), "encoder": encoder}
