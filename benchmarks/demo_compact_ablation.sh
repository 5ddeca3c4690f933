#!/usr/bin/env bash
# Towards a demo student at <= 25% of the teacher's parameters: trains compact students on the
# demo's feature store and prints, for each, the RSUM of its best-on-validation checkpoint on the
# demo's val and test splits and, as data of another kind, on the test images of the offline
# benchmark's emoji and clip art (`dsmd build-benchmark --out benchmark_data` first) and, for choices,
# on its emoji validation images (emoji_val). The
# teacher's figures come first (dsmd eval --store). One seed per row; about 10 minutes a row on
# 2 cores; a row trained already is scored again, an interrupted one resumes. Rows can be picked by
# name, and run with another seed as NAME@SEED, and on another
# split of the demo's images as NAME@SEED/SPLIT (data.split_seed=SPLIT: other val and test
# images, its own store, the teacher's figures on it printed first; a larger validation basis):
#   bash benchmarks/demo_compact_ablation.sh [OUT_DIR [ROW[@SEED[/SPLIT]] ...]]
set -euo pipefail
out=${1:-compact_ablation_out}
shift || true
dsmd=${DSMD:-.venv/bin/dsmd}  # DSMD=echo prints the commands instead
bench=${BENCHMARK_DATA:-benchmark_data}
for s in emoji clipart; do
  [[ -f "$bench/manifest_ood_$s.jsonl" ]] || { echo "no $bench/manifest_ood_$s.jsonl: run dsmd build-benchmark --out $bench" >&2; exit 2; }
done

# The unpaired caption pool: "a photo of a {word}." for every alphabetic ASCII word of 3+ letters in
# the student's (MiniLM's) vocabulary; the teacher labels the words the pairs never show.
words="$out/vocabulary_prompts.txt"
mkdir -p "$out"
[[ -f "$words" ]] || .venv/bin/python - "$words" <<'EOF'
import sys
from dsmd.data.unpaired import vocabulary_words
with open(sys.argv[1], "w", encoding="utf-8") as f:
    f.writelines(f"a photo of a {w}.\n" for w in vocabulary_words("minilm"))
EOF
words_store() {  # the store with the vocabulary pool (its own 8 views of every image): only for *_words rows
  [[ -f "$out/store_words/manifest.json" ]] || $dsmd extract --quiet --config demo store="$out/store_words" \
    data.unpaired_texts.kind=lines data.unpaired_texts.path="$words"
}
# The same vocabulary as a built-in pool (data.unpaired_texts.kind=vocabulary), for the text warm-up rows;
# their store is the demo's store of the split, extended with the pool (store_vocab, store_vocab_splitN).
vocab=(data.unpaired_texts.kind=vocabulary data.unpaired_texts.path=minilm)
vocab_store() {  # $1: the store, $2: the split; a copy of the split's demo store, extended with the pool
  [[ -f "$1/manifest.json" ]] && return
  local base="$out/store"
  [[ $2 == 0 ]] || base="$out/store_split$2"
  [[ -f "$base/manifest.json" ]] || $dsmd extract --quiet --config demo store="$base" data.split_seed="$2"
  [[ $dsmd == echo ]] || cp -r "$base" "$1.copy"
  [[ $dsmd == echo ]] || mv "$1.copy" "$1"
  $dsmd extract --quiet --config demo store="$1" data.split_seed="$2" "${vocab[@]}"
}
# Validation images of another kind, for choices: the benchmark's emoji val images (as a test split);
# and the test images of its emoji and clip art alone, for the teacher's figures on them.
emoji_val="$out/emoji_val.jsonl"
only() {  # $1: source, $2: split, $3: the manifest to write (its lines as a test split, absolute paths)
  [[ -f "$3" ]] || .venv/bin/python - "$bench/manifest.jsonl" "$1" "$2" "$3" <<'EOF2'
import json, sys
from pathlib import Path
src, source, split, dst = Path(sys.argv[1]), *sys.argv[2:]
rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
kept = [{**r, "image": str((src.parent / r["image"]).resolve()), "split": "test"} for r in rows
        if r["source"] == source and r["split"] == split]
Path(dst).write_text("".join(json.dumps(r) + "\n" for r in kept))
EOF2
}
teacher_on() {  # the offline teacher's metrics on the test split of manifest $1 (features kept in $2)
  [[ $dsmd == echo ]] && { echo "teacher on $1"; return; }
  .venv/bin/python - "$1" "$2" <<'EOF2'
import json, sys
from pathlib import Path
import torch
from dsmd.config import load_config, packaged_config
from dsmd.evaluation.retrieval import retrieval_metrics
from dsmd.reports.heldout import heldout_data, teacher_features
from dsmd.teachers import build_teacher
data = heldout_data(sys.argv[1])
teacher = build_teacher(load_config(packaged_config("demo"), []).teacher, torch.device("cpu"))
image, text = teacher_features(teacher, data, Path(sys.argv[2]), torch.device("cpu"))
print(json.dumps(retrieval_metrics(image, text, torch.tensor(data.caption_image))))
EOF2
}
only emoji val "$emoji_val"
$dsmd extract --quiet --config demo store="$out/store"
for split in val test; do echo "teacher $split $($dsmd eval --quiet --store "$out/store" --split $split --json)"; done
for s in emoji clipart; do
  only "$s" test "$out/${s}_test.jsonl"
  echo "teacher $s $(teacher_on "$out/${s}_test.jsonl" "$out/teacher_$s.safetensors")"
done
echo "teacher emoji_val $(teacher_on "$emoji_val" "$out/teacher_emoji_val.safetensors")"

# Every row starts from the demo's earlier, larger student (192 px, 3 MiniLM layers, the four
# DSMD losses, 12 epochs: what the demo config shipped when these rows were chosen), so that the
# rows keep their meaning now that the demo config is the bag88_head64_e30_recipe row.
source "$(dirname "$0")/demo_larger_student.sh"  # larger=(...): the earlier demo student
small=(student.image_size=96 student.text_layers=1)
bag=(student.image_size=96 student.text_layers=0 student.text_embedding_rank=88 student.vision_head_rank=64 student.text_positions=32)
compact=(student.text_positions=32)
long=(train.epochs=30 "train.lr_decay_epochs=[24]")
recipe=("loss.losses=[cd, fd, sd, hnd, clip]" "balancer.priors={clip: 4}")
unpaired=("loss.losses=[cd, fd, sd, hnd, clip, u_cd, u_fd, u_sd, u_hnd]" "balancer.priors={clip: 4}" train.unpaired_ratio=4
  data.unpaired_texts.kind=lines "data.unpaired_texts.path=$words")
row() {  # the overrides of one row, in the array "args"
  case $1 in
    whole_96px_1layer) args=(store="$out/store" "${small[@]}") ;;
    head256) args=(store="$out/store" "${small[@]}" student.vision_head_rank=256) ;;
    text16) args=(store="$out/store" "${small[@]}" "${compact[@]}" student.text_embedding_rank=16) ;;
    text16_head256_e30) args=(store="$out/store" "${small[@]}" "${compact[@]}" student.text_embedding_rank=16
      student.vision_head_rank=256 "${long[@]}") ;;
    text16_head256_e30_recipe) args=(store="$out/store" "${small[@]}" "${compact[@]}" student.text_embedding_rank=16
      student.vision_head_rank=256 "${long[@]}" "${recipe[@]}") ;;
    text32_head64_e30_recipe) args=(store="$out/store" "${small[@]}" "${compact[@]}" student.text_embedding_rank=32
      student.vision_head_rank=64 "${long[@]}" "${recipe[@]}") ;;
    text32_head64_e30_recipe_words) args=(store="$out/store_words" "${small[@]}" "${compact[@]}"
      student.text_embedding_rank=32 student.vision_head_rank=64 "${long[@]}" "${unpaired[@]}") ;;
    bag88_head64_e30_recipe) args=(store="$out/store" "${bag[@]}" "${long[@]}" "${recipe[@]}") ;;
    bag88_head64_e30_recipe_words) args=(store="$out/store_words" "${bag[@]}" "${long[@]}" "${unpaired[@]}") ;;
    bag88_head64_e30_recipe_112px) args=(store="$out/store" "${bag[@]}" "${long[@]}" "${recipe[@]}" student.image_size=112) ;;
    bag88_head64_e30_recipe_104px) args=(store="$out/store" "${bag[@]}" "${long[@]}" "${recipe[@]}" student.image_size=104) ;;
    bag88_head64_e30_recipe_ema) args=(store="$out/store" "${bag[@]}" "${long[@]}" "${recipe[@]}" train.ema_decay=0.98) ;;
    bag88_head64_e40_recipe_ema) args=(store="$out/store" "${bag[@]}" train.epochs=40 "train.lr_decay_epochs=[32]"
      "${recipe[@]}" train.ema_decay=0.98) ;;
    bag88_head64_e30_recipe_104px_warm10) args=(store="$out/store_vocab" "${bag[@]}" "${long[@]}" "${recipe[@]}"
      student.image_size=104 "${vocab[@]}" train.text_warmup_epochs=10) ;;
    bag88_head64_e30_recipe_104px_warm30) args=(store="$out/store_vocab" "${bag[@]}" "${long[@]}" "${recipe[@]}"
      student.image_size=104 "${vocab[@]}" train.text_warmup_epochs=30) ;;
    bag88_head64_e30_recipe_104px_warm10_lr3e-3) args=(store="$out/store_vocab" "${bag[@]}" "${long[@]}" "${recipe[@]}"
      student.image_size=104 "${vocab[@]}" train.text_warmup_epochs=10 train.text_warmup_lr=3e-3) ;;
    bag88_head64_e30_recipe_104px_warm10_utext) args=(store="$out/store_vocab" "${bag[@]}" "${long[@]}"
      student.image_size=104 "${vocab[@]}" train.text_warmup_epochs=10 "loss.losses=[cd, fd, sd, hnd, clip, u_fd, u_sd]"
      "balancer.priors={clip: 6}" train.unpaired_ratio=2) ;;
    bag88_head64_e30_recipe_104px_warm10_utext_lr3e-3) row bag88_head64_e30_recipe_104px_warm10_utext
      args+=(train.text_warmup_lr=3e-3) ;;
    bag88_head64_e30_recipe_104px_warm30_utext) row bag88_head64_e30_recipe_104px_warm10_utext
      args+=(train.text_warmup_epochs=30) ;;
    *) echo "no row $1" >&2; exit 2 ;;
  esac
}
order=(whole_96px_1layer head256 text16 text16_head256_e30 text16_head256_e30_recipe text32_head64_e30_recipe
  text32_head64_e30_recipe_words bag88_head64_e30_recipe bag88_head64_e30_recipe_words bag88_head64_e30_recipe_112px
  bag88_head64_e30_recipe_ema bag88_head64_e40_recipe_ema bag88_head64_e30_recipe_104px
  bag88_head64_e30_recipe_104px_warm10 bag88_head64_e30_recipe_104px_warm30 bag88_head64_e30_recipe_104px_warm10_lr3e-3
  bag88_head64_e30_recipe_104px_warm10_utext bag88_head64_e30_recipe_104px_warm10_utext_lr3e-3
  bag88_head64_e30_recipe_104px_warm30_utext)
[[ $# -gt 0 ]] && order=("$@")
on_split() {  # the row's args on split $1 of the demo's images: its own store, extracted on first use
  local split=$1 store="$out/store_split$1"
  if [[ " ${args[*]} " == *" store=$out/store_vocab "* ]]; then
    vocab_store "$out/store_vocab_split$split" "$split"
    args=("${args[@]/#store=$out\/store_vocab/store=$out/store_vocab_split$split}")
  else
    [[ " ${args[*]} " == *" store=$out/store "* ]] || { echo "row $name: only rows on $out/store or store_vocab run on another split" >&2; exit 2; }
    args=("${args[@]/#store=$out\/store/store=$store}")
  fi
  [[ -f "$store/manifest.json" ]] || $dsmd extract --quiet --config demo store="$store" data.split_seed="$split"
  if [[ -z ${teacher_printed[$split]:-} ]]; then  # the teacher's figures on the split, once a script run
    for s in val test; do echo "teacher/$split $s $($dsmd eval --quiet --store "$store" --split $s --json)"; done
    teacher_printed[$split]=1
  fi
  args+=(data.split_seed="$split")
}
declare -A teacher_printed
for name in "${order[@]}"; do
  seed=0 split=0
  [[ $name == */* ]] && split=${name#*/}
  base=${name%/*}
  [[ $base == *@* ]] && seed=${base#*@}
  row "${base%@*}"
  [[ " ${args[*]} " == *" store=$out/store_words "* ]] && words_store
  [[ $split == 0 && " ${args[*]} " == *" store=$out/store_vocab "* ]] && vocab_store "$out/store_vocab" 0
  [[ $split == 0 ]] || on_split "$split"
  run_dir="$out/${name//\//~split}"
  if [[ -f "$run_dir/result.json" ]]; then :  # trained already: scored again
  elif [[ -f "$run_dir/checkpoints/last.pt" ]]; then $dsmd train --quiet --resume out_dir="$run_dir" >/dev/null
  else $dsmd train --quiet --config demo out_dir="$run_dir" "${larger[@]}" "${args[@]}" train.seed="$seed" >/dev/null
  fi
  best="$run_dir/checkpoints/best.pt"
  for split in val test; do echo "$name $split $($dsmd eval --quiet --checkpoint "$best" --split $split --json)"; done
  for s in emoji clipart; do
    echo "$name $s $($dsmd eval --quiet --checkpoint "$best" --split test --json data.kind=manifest data.manifest="$bench/manifest_ood_$s.jsonl")"
  done
  echo "$name emoji_val $($dsmd eval --quiet --checkpoint "$best" --split test --json data.kind=manifest data.manifest="$emoji_val")"
  [[ $dsmd == echo ]] || echo "$name params $(.venv/bin/python -c 'import sys
from dsmd.training.checkpoint import student_from_checkpoint
print(student_from_checkpoint(sys.argv[1], "cpu")[0].num_parameters())' "$best")"
done
