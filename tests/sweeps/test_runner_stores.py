"""Which feature stores a pool of sweep runs extracts, without extracting (``extract`` recorded)."""

from __future__ import annotations

import pytest

from dsmd.errors import DsmdError
from dsmd.sweeps import load_sweep, runner
from dsmd.sweeps.runner import distinct_runs, extract_stores


@pytest.fixture
def extracted(monkeypatch) -> list[tuple[str, str | None, str | None]]:
    calls = []
    monkeypatch.setattr(
        runner,
        "extract",
        lambda cfg, **_: calls.append((cfg.store, cfg.data.unpaired_images.path, cfg.data.unpaired_texts.path)),
    )
    return calls


def test_runs_with_and_without_pools_share_a_store_that_the_pools_extend(extracted):
    runs = distinct_runs(load_sweep("offline_unpaired"))
    extract_stores(runs, log=lambda _: None, progress=False)
    stores = sorted({store for store, *_ in extracted})
    assert stores == [f"runs/offline/store{s}" for s in ("", "_ood_clipart", "_ood_emoji", "_ood_stamps")]
    pools = ("benchmark_data/unpaired/images.jsonl", "benchmark_data/unpaired/captions.jsonl")
    for store in stores:  # once without the pools, once with them (the half-ratio variant needs no other store)
        assert sorted((e[1:] for e in extracted if e[0] == store), key=str) == sorted([(None, None), pools], key=str)


def test_other_data_at_the_same_store_path_is_refused(extracted):
    runs = distinct_runs(load_sweep("offline_evidence"))
    in_domain = [r for r in runs if r.cfg.store == "runs/offline/store"]
    stamps = next(r for r in runs if r.cfg.store == "runs/offline/store_ood_stamps")
    stamps.cfg.store = "runs/offline/store"
    with pytest.raises(DsmdError, match="changes the teacher or data but keeps store=runs/offline/store"):
        extract_stores([*in_domain, stamps], log=lambda _: None, progress=False)
