#!/usr/bin/env bash
# Towards a demo student at <= 25% of the teacher's parameters: trains compact students on the
# demo's feature store and prints, for each, the RSUM of its best-on-validation checkpoint on the
# demo's val and test splits and, as data of another kind, on the test images of the offline
# benchmark's emoji and clip art (`dsmd build-benchmark --out benchmark_data` first). The
# teacher's figures come first (dsmd eval --store). One seed per row; about 10 minutes a row on
# 2 cores. Rows can be picked by name, and run with another seed as NAME@SEED, and on another
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
from transformers import AutoTokenizer
from dsmd.runtime.pretrained import minilm_folder
vocab = AutoTokenizer.from_pretrained(str(minilm_folder())).get_vocab()
words = [w for w in sorted(vocab, key=vocab.get) if w.isascii() and w.isalpha() and len(w) >= 3]
with open(sys.argv[1], "w", encoding="utf-8") as f:
    f.writelines(f"a photo of a {w}.\n" for w in words)
EOF
$dsmd extract --quiet --config demo store="$out/store"
words_store() {  # the store with the vocabulary pool (its own 8 views of every image): only for *_words rows
  [[ -f "$out/store_words/manifest.json" ]] || $dsmd extract --quiet --config demo store="$out/store_words" \
    data.unpaired_texts.kind=lines data.unpaired_texts.path="$words"
}

for split in val test; do echo "teacher $split $($dsmd eval --quiet --store "$out/store" --split $split --json)"; done
for s in emoji clipart; do
  $dsmd extract --quiet --config offline_benchmark data.manifest="$bench/manifest_ood_$s.jsonl" store="$out/store_ood_$s"
  echo "teacher $s $($dsmd eval --quiet --store "$out/store_ood_$s" --split test --json)"
done

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
    *) echo "no row $1" >&2; exit 2 ;;
  esac
}
order=(whole_96px_1layer head256 text16 text16_head256_e30 text16_head256_e30_recipe text32_head64_e30_recipe
  text32_head64_e30_recipe_words bag88_head64_e30_recipe bag88_head64_e30_recipe_words bag88_head64_e30_recipe_112px
  bag88_head64_e30_recipe_ema bag88_head64_e40_recipe_ema bag88_head64_e30_recipe_104px)
[[ $# -gt 0 ]] && order=("$@")
on_split() {  # the row's args on split $1 of the demo's images: its own store, extracted on first use
  local split=$1 store="$out/store_split$1"
  [[ " ${args[*]} " == *" store=$out/store "* ]] || { echo "row $name: only rows on $out/store run on another split" >&2; exit 2; }
  if [[ ! -f "$store/manifest.json" ]]; then
    $dsmd extract --quiet --config demo store="$store" data.split_seed="$split"
    for s in val test; do echo "teacher/$split $s $($dsmd eval --quiet --store "$store" --split $s --json)"; done
  fi
  args=("${args[@]/#store=$out\/store/store=$store}" data.split_seed="$split")
}
for name in "${order[@]}"; do
  seed=0 split=0
  [[ $name == */* ]] && split=${name#*/}
  base=${name%/*}
  [[ $base == *@* ]] && seed=${base#*@}
  row "${base%@*}"
  [[ " ${args[*]} " == *" store=$out/store_words "* ]] && words_store
  [[ $split == 0 ]] || on_split "$split"
  $dsmd train --quiet --config demo out_dir="$out/${name//\//~split}" "${larger[@]}" "${args[@]}" train.seed="$seed" >/dev/null
  best="$out/${name//\//~split}/checkpoints/best.pt"
  for split in val test; do echo "$name $split $($dsmd eval --quiet --checkpoint "$best" --split $split --json)"; done
  for s in emoji clipart; do
    echo "$name $s $($dsmd eval --quiet --checkpoint "$best" --split test --json data.kind=manifest data.manifest="$bench/manifest_ood_$s.jsonl")"
  done
  [[ $dsmd == echo ]] || echo "$name params $(.venv/bin/python -c 'import sys
from dsmd.training.checkpoint import student_from_checkpoint
print(student_from_checkpoint(sys.argv[1], "cpu")[0].num_parameters())' "$best")"
done
