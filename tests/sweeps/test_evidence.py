"""benchmarks/evidence.py: the rows, the teacher from its store and the verdicts against pairs."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from dsmd.store import SplitFeatures, write_split
from store_helpers import write_manifest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "evidence.py"


@pytest.fixture(scope="module")
def evidence():
    spec = importlib.util.spec_from_file_location("evidence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _teacher_store(folder: Path) -> None:
    """A test split of 4 images and 4 captions whose teacher RSUM is 575 (worked out below)."""
    image = torch.eye(4)
    # caption 0 (of image 0) equals image 1's feature: image 1 scores 1 against it, image 0 scores 0,
    # so its text->image rank is 1 (t2i R@1 75%, R@5 and R@10 100%); every image->text rank is 0
    # (image 0 scores 0 against every caption: ties favour the right one), so i2t is 300
    text = torch.eye(4)[[1, 1, 2, 3]]
    folder.mkdir(parents=True)
    records = write_split(folder, "test", SplitFeatures(image, text, torch.arange(4)))
    write_manifest(folder, 4, {"test": (4, 4)}, {"test": records})


def _row(name: str, seeds: list[int], values: list[float], store: Path | None = None) -> dict:
    overrides = [f"data.manifest=m_{name.split(' ')[0]}.jsonl", *([f"store={store}"] if store else [])]
    return {"name": name, "overrides": overrides, "n": len(values), "seeds": seeds, "rsum_values": values}


@pytest.fixture
def sweep_json(tmp_path) -> Path:
    store = tmp_path / "store"
    _teacher_store(store)
    missing = tmp_path / "store_ood_stamps"
    rows = [
        _row("in_domain / dsmd", [0, 1, 2], [80.0, 85.0, 95.0], store),
        _row("in_domain / pairs", [0, 1, 2], [100.0, 110.0, 120.0], store),
        _row("in_domain / dsmd_pairs", [0, 1, 2], [105.0, 109.0, 125.0], store),
        _row("in_domain / dcd", [0, 1, 2], [130.0, 140.0, 150.0], store),
        _row("in_domain / kd", [], [], store),  # no finished run
        _row("ood_stamps / dsmd", [0, 1, 2], [70.0, 75.0, 90.0], missing),
        _row("ood_stamps / pairs", [0, 1], [50.0, 60.0], missing),
        _row("ood_stamps / recipe", [0], [40.0], missing),
        _row("a sanity check", [0], [1.0]),  # not '<setting> / <method>'
    ]
    failed = [{"name": "ood_stamps / pairs", "seed": 2, "folder": "runs/x"}]
    path = tmp_path / "evidence" / "sweep.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"sweep": "offline_evidence", "seeds": [0, 1, 2], "rows": rows, "failed": failed}))
    return path


def test_variant_names_map_to_setting_and_method(evidence):
    assert evidence.parse_variant("ood_stamps / dsmd") == ("ood_stamps", "dsmd")
    assert evidence.parse_variant("in_domain / dsmd_pairs") == ("in_domain", "dsmd_pairs")
    assert evidence.parse_variant("in_domain / teacher") is None
    assert evidence.parse_variant("DSMD (CD + FD + SD + HND)") is None


def test_rows_means_stds_and_verdicts(evidence, sweep_json, tmp_path):
    out_json, out_md = tmp_path / "out" / "evidence.json", tmp_path / "out" / "evidence.md"
    assert evidence.main(["--sweep", str(sweep_json), "--json", str(out_json), "--md", str(out_md)]) == 0
    rows = {(r["setting"], r["variant"]): r for r in json.loads(out_json.read_text())}
    assert list(rows) == [
        ("in_domain", "teacher"),
        ("in_domain", "dsmd"),
        ("in_domain", "pairs"),
        ("in_domain", "dsmd_pairs"),
        ("in_domain", "dcd"),
        ("ood_stamps", "dsmd"),
        ("ood_stamps", "pairs"),
        ("ood_stamps", "recipe"),
    ]  # kd has no finished run, ood_stamps' store is missing: no teacher
    teacher = rows["in_domain", "teacher"]
    assert teacher["n"] == 1 and teacher["rsum_std"] == 0 and teacher["rsums"] == [pytest.approx(575.0)]
    pairs = rows["in_domain", "pairs"]
    assert (pairs["n"], pairs["rsum_mean"], pairs["rsum_std"]) == (3, pytest.approx(110.0), pytest.approx(10.0))
    assert pairs["rsums"] == [100.0, 110.0, 120.0] and pairs["vs_pairs"] is None
    dsmd = rows["in_domain", "dsmd"]
    assert dsmd["rsum_mean"] == pytest.approx(260 / 3) and dsmd["rsum_std"] == pytest.approx(math.sqrt(175 / 3))
    # differences -20, -25, -25: mean -70/3, sd sqrt(25/3), se 5/3, t = -14
    assert dsmd["vs_pairs"]["diff_mean"] == pytest.approx(-70 / 3)
    assert dsmd["vs_pairs"]["diff_se"] == pytest.approx(5 / 3) and dsmd["vs_pairs"]["t"] == pytest.approx(-14.0)
    assert dsmd["vs_pairs"]["verdict"] == "loses"
    # differences 5, -1, 5: mean 3, se 2, t 1.5
    assert rows["in_domain", "dsmd_pairs"]["vs_pairs"]["t"] == pytest.approx(1.5)
    assert rows["in_domain", "dsmd_pairs"]["vs_pairs"]["verdict"] == "cannot tell"
    assert rows["in_domain", "dcd"]["vs_pairs"]["verdict"] == "wins"  # +30 at every seed
    # the teacher's 575 against each seed of pairs: 475, 465, 455
    assert teacher["vs_pairs"]["diff_mean"] == pytest.approx(465.0)
    assert teacher["vs_pairs"]["diff_se"] == pytest.approx(10 / math.sqrt(3))
    assert teacher["vs_pairs"]["verdict"] == "wins"
    # only the seeds both finished are paired: 20, 15 at seeds 0 and 1, t = 7 < 12.706
    ood = rows["ood_stamps", "dsmd"]["vs_pairs"]
    assert (ood["n"], ood["diff_mean"], ood["t"], ood["verdict"]) == (2, 17.5, pytest.approx(7.0), "cannot tell")
    assert rows["ood_stamps", "recipe"]["vs_pairs"]["verdict"] == "not enough seeds"
    text = out_md.read_text()
    assert "| dsmd | 86.7 ± 7.6 (3) | -23.3 ± 1.7 | loses |" in text
    assert "| teacher | 575.0 | 465.0 ± 5.8 | wins |" in text
    assert "| in_domain | 575.0 | 110.0 ± 10.0 (3) | 86.7 ± 7.6 (3) | 113.0 ± 10.6 (3) | – | dcd (140.0) | wins" in text
    assert (
        "| ood_stamps | – | 55.0 ± 7.1 (2) | 78.3 ± 10.4 (3) | – | 40.0 ± 0.0 (1) | dsmd (78.3) | cannot tell" in text
    )
    assert "No teacher figure: no feature store at" in text and "ood_stamps / pairs (seed 2)" in text
    assert "unpaired pools" not in text  # no variant with pools: no such table


def test_a_missing_sweep_names_the_command(evidence, tmp_path):
    with pytest.raises(SystemExit, match="dsmd sweep offline_evidence"):
        evidence.evidence([tmp_path / "sweep.json"])


def test_a_second_sweep_adds_its_variants_and_may_be_missing(evidence, sweep_json, tmp_path, capsys):
    rows, notes = evidence.evidence([sweep_json, tmp_path / "not_run" / "sweep.json"])
    assert "not_run/sweep.json not found" in capsys.readouterr().err
    assert notes["sweep"] == str(sweep_json) and len(rows) == 8  # as from offline_evidence alone
    store = tmp_path / "store"
    unpaired = tmp_path / "unpaired" / "sweep.json"
    unpaired.parent.mkdir()
    shared = _row("in_domain / dsmd", [0, 1, 2], [1.0, 2.0, 3.0], store)  # shared with the first: not taken
    extra = _row("in_domain / recipe_unpaired", [0, 1, 2], [111.0, 121.0, 131.0], store)
    unpaired.write_text(json.dumps({"seeds": [0, 1, 2], "rows": [shared, extra], "failed": []}))
    rows = {(r["setting"], r["variant"]): r for r in evidence.evidence([sweep_json, unpaired])[0]}
    assert rows["in_domain", "dsmd"]["rsums"] == [80.0, 85.0, 95.0]
    assert rows["in_domain", "recipe_unpaired"]["vs_pairs"]["verdict"] == "wins"  # +11 at every seed
    assert rows["in_domain", "recipe_unpaired"]["vs_recipe"] is None  # no recipe runs in-domain
    assert rows["in_domain", "dsmd"]["vs_recipe"] is None  # only the variants with pools


def test_the_unpaired_pools_are_judged_against_the_recipe(evidence, sweep_json, tmp_path):
    store = tmp_path / "store"
    unpaired = tmp_path / "unpaired" / "sweep.json"
    unpaired.parent.mkdir()
    table = [
        _row("in_domain / recipe", [0, 1, 2], [100.0, 104.0, 99.0], store),
        _row("in_domain / recipe_unpaired", [0, 1, 2], [90.0, 95.0, 88.0], store),  # -10, -9, -11
        _row("in_domain / recipe_unpaired_half", [0, 2], [101.0, 99.0], store),  # +1, 0 at seeds 0, 2
    ]
    unpaired.write_text(json.dumps({"seeds": [0, 1, 2], "rows": table, "failed": []}))
    rows, notes = evidence.evidence([sweep_json, unpaired])
    named = {(r["setting"], r["variant"]): r for r in rows}
    full = named["in_domain", "recipe_unpaired"]["vs_recipe"]
    assert (full["n"], full["diff_mean"], full["diff_se"]) == (3, -10.0, pytest.approx(1 / math.sqrt(3)))
    assert full["verdict"] == "loses"
    half = named["in_domain", "recipe_unpaired_half"]["vs_recipe"]
    assert (half["n"], half["diff_mean"], half["verdict"]) == (2, 0.5, "cannot tell")
    assert named["in_domain", "recipe"]["vs_recipe"] is None
    text = evidence.markdown(rows, notes)
    assert "### What the unpaired pools add to the recipe" in text
    assert "| in_domain | recipe_unpaired | 101.0 ± 2.6 (3) | 91.0 ± 3.6 (3) | -10.0 ± 0.6 | loses |" in text
    assert evidence.parse_variant("ood_emoji / recipe_unpaired_half") == ("ood_emoji", "recipe_unpaired_half")


def test_the_recipe_targets_are_judged_on_the_rows(evidence):
    def row(setting, variant, rsums, seeds=(0, 1, 2)):
        mean = sum(rsums) / len(rsums)
        return {"setting": setting, "variant": variant, "rsum_mean": mean, "rsums": rsums, "seeds": list(seeds)}

    rows = [
        row("in_domain", "pairs", [100.0, 110.0, 120.0]),
        row("in_domain", "recipe", [99.0, 108.0, 121.0]),  # -0.67 ± 1.2: not significantly below
        row("ood_stamps", "teacher", [300.0], seeds=(0,)),
        row("ood_stamps", "dsmd", [150.0, 160.0, 170.0]),
        row("ood_stamps", "pairs", [100.0, 110.0, 120.0]),
        row("ood_stamps", "recipe", [140.0, 149.0, 160.7]),  # below dsmd by 10.1 ± 0.49: significant
        row("ood_emoji", "pairs", [10.0, 20.0, 30.0]),
        row("ood_emoji", "recipe", [11.0, 21.0, 31.0]),  # above pairs, the better of the two present
    ]
    got = {(c["target"][:9], c["setting"]): c for c in evidence.recipe_criteria(rows)}
    assert got["not below", "in_domain"]["met"] is True
    assert (
        got["not below", "ood_stamps"]["met"] is False
        and "recipe − dsmd: -10.1 ± 0.5" in got["not below", "ood_stamps"]["detail"]
    )
    assert got["not below", "ood_emoji"]["met"] is True
    assert got["not below", "ood_clipart"]["met"] is None  # no runs
    assert got["half the ", "ood_stamps"]["met"] is False  # 149.9 of 300 is just short of half
    assert "149.9 of the teacher's 300.0 (50%)" in got["half the ", "ood_stamps"]["detail"]


def test_the_packaged_recipe_is_the_runs_that_tested_it():
    """offline_recipe trains exactly the runs of offline_evidence's recipe variants and of the chosen prior."""
    from dsmd.config import config_to_dict, load_config
    from dsmd.sweeps.spec import load_sweep

    def without_out_dir(cfg):
        return {k: v for k, v in config_to_dict(cfg).items() if k != "out_dir"}

    recipe = without_out_dir(load_config("offline_recipe"))
    evidence, search = load_sweep("offline_evidence"), load_sweep("offline_recipe_search")
    in_domain = [run for run in evidence.runs if run.variant == "in_domain / recipe" and run.seed == 0]
    chosen = [run for run in search.runs if run.variant == "in_domain / clip prior 4" and run.seed == 0]
    assert len(in_domain) == len(chosen) == 1
    assert in_domain[0].folder == chosen[0].folder
    assert without_out_dir(in_domain[0].cfg) == recipe
    ood = {run.variant for run in evidence.runs if run.variant.endswith("/ recipe")}
    assert ood == {f"{s} / recipe" for s in ("in_domain", "ood_stamps", "ood_emoji", "ood_clipart")}
