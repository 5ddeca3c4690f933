"""Where distillation pays: the offline_evidence sweep against the teacher and against training on the pairs alone.

Reads ``sweep.json`` of ``dsmd sweep offline_evidence`` (variants ``<setting> / <method>``) and,
for each setting (in_domain, ood_stamps, ood_emoji, ood_clipart), scores the teacher on that
setting's test split from its feature store (the ``store=`` of the setting's variants; the
teacher does not depend on the seed, so it is one figure). Every variant is compared with
``pairs`` (the same student trained with the CLIP loss, no teacher): the mean over seeds of the
per-seed RSUM difference, its standard error and a paired two-sided t-test at 95%
(``paired_stats.py``); the teacher's difference is taken against each seed of ``pairs`` (a
one-sample test). Verdicts: **wins** or **loses** (significant, that sign), **cannot tell**,
**identical runs**, **not enough seeds**.

    .venv/bin/python benchmarks/evidence.py [--sweep sweeps/offline/evidence/sweep.json sweeps/offline/unpaired/sweep.json]

Reads offline_unpaired's table too (variants ``recipe_unpaired``, ``recipe_unpaired_half``,
``recipe_unpaired_clip8``: the recipe with unpaired pools), when that sweep has run.

Writes the rows as JSON (``--json``, default docs/results/evidence.json): one per setting and
variant with finished runs, ``{"setting", "variant", "n", "rsum_mean", "rsum_std", "rsums",
"seeds", "vs_pairs", "vs_recipe"}`` (``vs_pairs``: ``{"n", "diff_mean", "diff_se", "t", "verdict"}``,
or None for ``pairs`` itself and where ``pairs`` has no runs; ``vs_recipe``: the same test against
the setting's ``recipe``, for the variants with unpaired pools only, else None); and the markdown it
prints (``--md``, default docs/results/evidence.md): a table per setting, a summary of where the
distilled student wins and loses against training without a teacher, and what the unpaired pools
add to the recipe. RSUMs compare within a setting only:
each setting's test split has its own images (in_domain all three sources, ood_S source S alone).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from dsmd.errors import DsmdError
from dsmd.evaluation.retrieval import retrieval_metrics
from dsmd.runtime.files import write_json_atomic, write_text_atomic
from dsmd.store import FeatureStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_stats import paired, significance  # noqa: E402

SETTINGS = ("in_domain", "ood_stamps", "ood_emoji", "ood_clipart")
# the recipe with unpaired pools (offline_unpaired), each also compared with the recipe without them
UNPAIRED = ("recipe_unpaired", "recipe_unpaired_half", "recipe_unpaired_clip8")
VARIANTS = ("teacher", "dsmd", "pairs", "dsmd_pairs", "recipe", "dcd", "kd", *UNPAIRED)
# the methods that learn from the teacher: the summary's "best distiller" is one of them
DISTILLERS = ("dsmd", "dsmd_pairs", "recipe", "dcd", "kd", *UNPAIRED)
# the sweeps read by default: offline_evidence (required) and offline_unpaired (when it has run)
SWEEPS = ("sweeps/offline/evidence/sweep.json", "sweeps/offline/unpaired/sweep.json")
REFERENCE = "pairs"
DEFAULT_STORE = "runs/offline/store"
HELD_OUT = {"in_domain": "none: all three sources", **{f"ood_{s}": s for s in ("stamps", "emoji", "clipart")}}


def parse_variant(name: str) -> tuple[str, str] | None:
    """``("ood_stamps", "dsmd")`` from ``"ood_stamps / dsmd"``; None for a name of another form."""
    setting, sep, method = (part.strip() for part in name.partition("/"))
    if not sep or setting not in SETTINGS or method not in VARIANTS or method == "teacher":
        return None
    return setting, method


def _store_of(overrides: list[str]) -> str:
    stores = [o.split("=", 1)[1] for o in overrides if o.startswith("store=")]
    return stores[-1] if stores else DEFAULT_STORE


def run_rows(table: dict) -> tuple[list[dict], dict[str, str]]:
    """The finished variants of a sweep table as rows, and each setting's store.

    Returns:
        Rows ``{"setting", "variant", "n", "rsum_mean", "rsum_std", "rsums", "seeds"}`` of the
        variants with at least one finished seed, and ``{setting: store path}`` for every
        setting the sweep names.
    """
    rows, stores = [], {}
    for row in table["rows"]:
        parsed = parse_variant(row["name"])
        if parsed is None:
            print(f"evidence: variant '{row['name']}' is not '<setting> / <method>'; left out", file=sys.stderr)
            continue
        setting, variant = parsed
        stores.setdefault(setting, _store_of(row.get("overrides", [])))
        if row["n"] == 0:
            continue
        rsums = [float(v) for v in row["rsum_values"]]
        rows.append(
            {
                "setting": setting,
                "variant": variant,
                "n": len(rsums),
                "rsum_mean": statistics.fmean(rsums),
                "rsum_std": statistics.stdev(rsums) if len(rsums) > 1 else 0.0,
                "rsums": rsums,
                "seeds": list(row["seeds"]),
            }
        )
    return rows, stores


def teacher_test(store: str | Path) -> tuple[float, int]:
    """The teacher's test RSUM from the features in ``store``, and the number of test images."""
    feats = FeatureStore.open(store).split("test")
    return retrieval_metrics(feats.image, feats.text, feats.caption_image)["rsum"], feats.num_images


def verdict(test: dict) -> str:
    """``wins`` or ``loses`` (significant, that sign) for a :func:`paired` test of a variant minus
    ``pairs``, or what :func:`significance` says."""
    state = significance(test)
    if state != "significant":
        return state
    return "wins" if test["diff_mean"] > 0 else "loses"


def _stats_row(row: dict, seeds: list[int]) -> dict:
    """A row as :func:`paired` reads it; the teacher's one figure stands at every seed of ``seeds``."""
    if row["variant"] == "teacher":
        return {"seeds": seeds, "rsum_values": [row["rsum_mean"]] * len(seeds)}
    return {"seeds": row["seeds"], "rsum_values": row["rsums"]}


def _against(row: dict, ref: dict | None) -> dict | None:
    """The paired test of ``row`` minus ``ref`` with its verdict, or None without a reference."""
    if ref is None or row is ref:
        return None
    test = paired(_stats_row(row, ref["seeds"]), _stats_row(ref, ref["seeds"]))
    return {**test, "verdict": verdict(test)}


def compare(rows: list[dict]) -> None:
    """Add ``vs_pairs`` and ``vs_recipe`` to every row in place (see the module docstring)."""
    pairs = {r["setting"]: r for r in rows if r["variant"] == REFERENCE}
    recipe = {r["setting"]: r for r in rows if r["variant"] == "recipe"}
    for row in rows:
        row["vs_pairs"] = _against(row, pairs.get(row["setting"]))
        row["vs_recipe"] = _against(row, recipe.get(row["setting"])) if row["variant"] in UNPAIRED else None


def evidence(sweep_jsons: list[Path]) -> tuple[list[dict], dict]:
    """The rows (see the module docstring), in setting then variant order, and notes for the markdown:
    ``{"sweep", "seeds", "failed", "test_images": {setting: n}, "no_teacher": {setting: reason}}``.

    The first sweep must exist (offline_evidence); a later one that has not run is left out with a
    note. A variant that two sweeps share (``recipe`` of offline_unpaired) is taken from the first.
    """
    first, *more = sweep_jsons
    if not first.is_file():
        raise SystemExit(f"{first} not found: run `dsmd sweep offline_evidence` first (or give --sweep).")
    rows, stores, read, seeds, failed = [], {}, [], [], []
    for path in [first, *more]:
        if not path.is_file():
            print(f"evidence: {path} not found (its sweep has not run); left out", file=sys.stderr)
            continue
        table = json.loads(path.read_text())
        new_rows, new_stores = run_rows(table)
        have = {(r["setting"], r["variant"]) for r in rows}
        rows += [r for r in new_rows if (r["setting"], r["variant"]) not in have]
        stores = {**new_stores, **stores}
        read.append(str(path))
        seeds += [s for s in table.get("seeds") or [] if s not in seeds]
        failed += table.get("failed", [])
    notes = {"sweep": "`, `".join(read), "seeds": seeds, "failed": failed}
    notes["test_images"], notes["no_teacher"] = {}, {}
    for setting, store in stores.items():
        try:
            rsum, images = teacher_test(store)
        except DsmdError as exc:
            notes["no_teacher"][setting] = str(exc).rstrip(".")
            continue
        notes["test_images"][setting] = images
        teacher = {"setting": setting, "variant": "teacher", "n": 1, "rsum_mean": rsum, "rsum_std": 0.0}
        rows.append({**teacher, "rsums": [rsum], "seeds": None})
    rows.sort(key=lambda r: (SETTINGS.index(r["setting"]), VARIANTS.index(r["variant"])))
    compare(rows)
    return rows, notes


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _rsum(row: dict | None) -> str:
    if row is None:
        return "–"
    if row["variant"] == "teacher":
        return _fmt(row["rsum_mean"])
    return f"{row['rsum_mean']:.1f} ± {row['rsum_std']:.1f} ({row['n']})"


def _setting_table(setting: str, rows: list[dict], notes: dict) -> list[str]:
    images = notes["test_images"].get(setting)
    head = f"### {setting} (held out: {HELD_OUT[setting]}" + (f"; {images} test images)" if images else ")")
    out = [head, "", "| variant | RSUM (mean ± std, n) | Δ vs pairs (± se) | verdict vs pairs |", "|---|---|---|---|"]
    for row in rows:
        test = row["vs_pairs"]
        if test is None:
            delta, word = ("(reference)", "") if row["variant"] == REFERENCE else ("–", "no pairs runs")
        else:
            delta, word = f"{_fmt(test['diff_mean'])} ± {_fmt(test['diff_se'])}", test["verdict"]
        out.append(f"| {row['variant']} | {_rsum(row)} | {delta} | {word} |")
    if setting in notes["no_teacher"]:
        out.append(f"\nNo teacher figure: {notes['no_teacher'][setting]}.")
    return [*out, ""]


def best_distiller(rows: list[dict]) -> dict | None:
    """The distiller (:data:`DISTILLERS`) with the highest mean RSUM among ``rows`` (one setting's)."""
    candidates = [r for r in rows if r["variant"] in DISTILLERS]
    return max(candidates, key=lambda r: r["rsum_mean"]) if candidates else None


def _summary(by_setting: dict[str, list[dict]]) -> list[str]:
    cols = ["teacher", "pairs", "dsmd", "dsmd_pairs", "recipe"]
    if any(r["variant"] == "recipe_unpaired" for rows in by_setting.values() for r in rows):
        cols.append("recipe_unpaired")
    out = [
        "### Where the distilled student wins and loses against training without a teacher",
        "",
        "| setting | " + " | ".join(cols) + " | best distiller | its verdict vs pairs (Δ ± se) |",
        "|---|" + "---|" * (len(cols) + 2),
    ]
    for setting, rows in by_setting.items():
        named = {r["variant"]: r for r in rows}
        best = best_distiller(rows)
        if best is None:
            best_cell, word = "–", "–"
        else:
            test = best["vs_pairs"]
            best_cell = f"{best['variant']} ({best['rsum_mean']:.1f})"
            word = (
                "no pairs runs"
                if test is None
                else f"{test['verdict']} ({_fmt(test['diff_mean'])} ± {_fmt(test['diff_se'])})"
            )
        cells = [_rsum(named.get(c)) for c in cols]
        out.append(f"| {setting} | " + " | ".join(cells) + f" | {best_cell} | {word} |")
    return [*out, ""]


def recipe_criteria(rows: list[dict]) -> list[dict]:
    """The recipe's three targets, each with the figures it is judged on.

    1. in_domain: not significantly below ``pairs`` (paired t-test at 95%);
    2. every ood setting: not significantly below the better (by mean) of ``dsmd`` and ``pairs``;
    3. ood_stamps: at least half of the teacher's RSUM (the mean over seeds).

    Returns:
        ``[{"target", "setting", "met": True | False | None (no runs yet), "detail"}]``.
    """
    named = {(r["setting"], r["variant"]): r for r in rows}
    out = []

    def against(setting: str, other: str, target: str) -> None:
        recipe, ref = named.get((setting, "recipe")), named.get((setting, other))
        if recipe is None or ref is None:
            out.append({"target": target, "setting": setting, "met": None, "detail": "runs missing"})
            return
        test = paired(_stats_row(recipe, ref["seeds"]), _stats_row(ref, ref["seeds"]))
        word = significance(test)
        below = word == "significant" and test["diff_mean"] < 0
        met = None if word == "not enough seeds" else not below
        detail = f"recipe − {other}: {_fmt(test['diff_mean'])} ± {_fmt(test['diff_se'])} ({word}, n={test['n']})"
        out.append({"target": target, "setting": setting, "met": met, "detail": detail})

    against("in_domain", "pairs", "not below pairs in-domain")
    for setting in SETTINGS[1:]:
        pair = [named.get((setting, v)) for v in ("dsmd", "pairs")]
        better = max((r for r in pair if r), key=lambda r: r["rsum_mean"], default=None)
        against(setting, better["variant"] if better else "pairs", "not below the better of dsmd and pairs")
    recipe, teacher = named.get(("ood_stamps", "recipe")), named.get(("ood_stamps", "teacher"))
    if recipe is None or teacher is None:
        out.append({"target": "half the teacher", "setting": "ood_stamps", "met": None, "detail": "runs missing"})
    else:
        share = recipe["rsum_mean"] / teacher["rsum_mean"]
        detail = f"{recipe['rsum_mean']:.1f} of the teacher's {teacher['rsum_mean']:.1f} ({100 * share:.0f}%)"
        out.append({"target": "half the teacher", "setting": "ood_stamps", "met": share >= 0.5, "detail": detail})
    return out


def _unpaired_table(by_setting: dict[str, list[dict]]) -> list[str]:
    """The recipe with and without the unpaired pools, setting by setting (empty before they ran)."""
    lines = []
    for setting, rows in by_setting.items():
        named = {r["variant"]: r for r in rows}
        for variant in (v for v in UNPAIRED if v in named):
            row, test = named[variant], named[variant]["vs_recipe"]
            delta = "–" if test is None else f"{_fmt(test['diff_mean'])} ± {_fmt(test['diff_se'])}"
            word = "no recipe runs" if test is None else test["verdict"]
            lines.append(f"| {setting} | {variant} | {_rsum(named.get('recipe'))} | {_rsum(row)} | {delta} | {word} |")
    if not lines:
        return []
    head = [
        "### What the unpaired pools add to the recipe",
        "",
        "Δ is the variant minus `recipe` (the same student and losses without the pools), per seed, ± se.",
        "",
        "| setting | variant | recipe | with the pools | Δ vs recipe (± se) | verdict vs recipe |",
        "|---|---|---|---|---|---|",
    ]
    return [*head, *lines, ""]


def _criteria_table(criteria: list[dict]) -> list[str]:
    word = {True: "met", False: "**not met**", None: "not yet measured"}
    out = ["### The recipe's targets", "", "| target | setting | result | figures |", "|---|---|---|---|"]
    out += [f"| {c['target']} | {c['setting']} | {word[c['met']]} | {c['detail']} |" for c in criteria]
    return [*out, ""]


def markdown(rows: list[dict], notes: dict) -> str:
    """One table per setting, then the summary (see the module docstring)."""
    by_setting = {s: [r for r in rows if r["setting"] == s] for s in SETTINGS}
    by_setting = {s: rs for s, rs in by_setting.items() if rs}
    out = [
        "## Where distillation pays",
        "",
        f"From `{notes['sweep']}` (seeds {notes['seeds']}) and the teacher's features in each setting's store. "
        "RSUM is the test split's sum of six recalls (at most 600); it compares within a setting only, as each "
        "setting tests on its own images. Δ is the variant minus `pairs` (the same student trained on the pairs "
        "alone, no teacher), the mean of the per-seed differences, ± one standard error; the verdict is a paired "
        "two-sided t-test at 95%. The teacher is one figure (it does not depend on the seed): its Δ is taken "
        "against each seed of `pairs`.",
        "",
    ]
    for setting, setting_rows in by_setting.items():
        out += _setting_table(setting, setting_rows, notes)
    out += _summary(by_setting)
    out += _unpaired_table(by_setting)
    out += _criteria_table(recipe_criteria(rows))
    if notes["failed"]:
        failed = "; ".join(f"{f['name']} (seed {f['seed']})" for f in notes["failed"])
        out += [f"Failed runs (left out): {failed}.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sweep",
        nargs="+",
        default=list(SWEEPS),
        help="the sweeps' sweep.json: offline_evidence's first (default: it and offline_unpaired's)",
    )
    parser.add_argument("--json", default="docs/results/evidence.json", help="where to write the rows")
    parser.add_argument("--md", default="docs/results/evidence.md", help="where to write the markdown")
    args = parser.parse_args(argv)
    rows, notes = evidence([Path(p) for p in args.sweep])
    text = markdown(rows, notes)
    for path in (args.json, args.md):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.json, rows)
    write_text_atomic(args.md, text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
