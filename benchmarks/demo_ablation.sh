#!/usr/bin/env bash
# What each choice of the demo's earlier, larger student (192 px, 3 MiniLM layers, 22.4M
# parameters; `larger` below pins it, the demo config now ships a compact one) does: trains it
# four ways on one feature store and prints validation and test RSUM (the teacher's: dsmd eval
# --store). ~15 min on 2 cores.
#   bash benchmarks/demo_ablation.sh [OUT_DIR]
set -euo pipefail
out=${1:-ablation_out}
dsmd=".venv/bin/dsmd"
$dsmd extract --quiet store="$out/store"
echo "teacher: val $($dsmd eval --store "$out/store" --split val --json)"
echo "teacher: test $($dsmd eval --store "$out/store" --split test --json)"
source "$(dirname "$0")/demo_larger_student.sh"  # larger=(...): the earlier demo student
run() {
  name=$1; shift
  $dsmd train --quiet store="$out/store" out_dir="$out/$name" "${larger[@]}" "$@" >/dev/null
  for split in val test; do
    echo "$name ($*): $split $($dsmd eval --checkpoint "$out/$name/checkpoints/best.pt" --split $split --json)"
  done
}
plain="student.vision_head=features student.vision_proj_init=default"
run paper_settings $plain train.head_lr_scale=1 store_views=0
run head_lr_x10 $plain store_views=0
run consistent_views $plain
run teacher_init_head    # the larger student as the demo shipped it
