"""Time ``dsmd demo`` end to end in a fresh folder and check its targets.

Targets: at most 10 minutes on the 2-core CPU machine (set-up excluded); on the test split the
student keeps at least 95% of the teacher's RSUM, at least 85% of its R@1 in each direction, at
most 12.5% of its latency (ms per image + ms per caption, both timed in the demo's process) and
at most 25% of its parameters (the shares of the demo's report); on each held-out kind of image
(the report's ``heldout``: the offline benchmark's emoji and clip art test images) at least 90% of
the teacher's RSUM. Prints one JSON line; ``--json PATH`` writes it.

    .venv/bin/python benchmarks/bench_demo.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="demo folder (default: a fresh temporary folder, removed afterwards)")
    p.add_argument("--json", help="write the JSON result here")
    args = p.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="dsmd_demo_"))
    if (out / "store").exists() or (out / "train").exists():
        sys.exit(f"{out} already holds a demo; the benchmark times a fresh run. Remove it or pick another --out.")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dsmd", "demo", "--quiet", "--out", str(out)], check=True)
    seconds = time.perf_counter() - t0
    report = json.loads((out / "report.json").read_text())
    t, s = report["teacher"], report["student"]
    result = {
        "seconds": round(seconds, 1),
        "teacher_rsum": round(t["rsum"], 2),
        "student_rsum": round(s["rsum"], 2),
        "rsum_ratio": round(s["rsum"] / t["rsum"], 4),
        "params": {"teacher": t["params"], "student": s["params"]},
        "image_latency_ms": {"teacher": t["image_latency_ms"], "student": s["image_latency_ms"]},
        "text_latency_ms": {"teacher": t["text_latency_ms"], "student": s["text_latency_ms"]},
        "shares": report["meta"]["student_share_of_teacher"],
        "heldout_shares": report["meta"].get("student_rsum_over_teacher_heldout", {}),
    }
    shares = result["shares"]
    result["targets_met"] = {
        "under_10_minutes": seconds <= 600,
        "rsum_share_at_least_0.95": shares["rsum"] >= 0.95,
        "r1_shares_at_least_0.85": min(shares["i2t_r1"], shares["t2i_r1"]) >= 0.85,
        "latency_share_at_most_0.125": shares["latency"] <= 0.125,
        "params_share_at_most_0.25": shares["params"] <= 0.25,
        **{f"{kind}_rsum_share_at_least_0.90": share >= 0.90 for kind, share in result["heldout_shares"].items()},
    }
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if not args.out:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
