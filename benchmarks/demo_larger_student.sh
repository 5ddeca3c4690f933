# Sourced by demo_ablation.sh and demo_compact_ablation.sh: the overrides that turn the demo config
# back into the demo's earlier, larger student (192 px, 3 MiniLM layers, whole tables, DSMD's four
# losses, 12 epochs, no caption pool or text warm-up), the base of both ablations' rows.
# shellcheck disable=SC2034  # used by the scripts that source this file
larger=(student.image_size=192 student.text_layers=3 student.vision_head_rank=null student.text_embedding_rank=null
  student.text_positions=null "loss.losses=[cd, fd, sd, hnd]" "balancer.priors={}" train.epochs=12 "train.lr_decay_epochs=[8]"
  data.unpaired_texts.kind=none data.unpaired_texts.path=null train.text_warmup_epochs=0 train.unpaired_ratio=1)
