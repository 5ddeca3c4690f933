"""Communication against compute for data-parallel DSMD training, computed (docs/scaling.md).

For the paper's student (ViT-B/16 + BERT-base, D = 768) on G GPUs per node and 1..16 nodes,
per optimiser step with ``--per-gpu-batch`` pairs on every GPU:

- compute: the FLOPs of one forward + backward (counted with ``torch.utils.flop_counter`` on
  the real architectures, random weights) / the sustained TFLOP/s assumed;
- gradient all-reduce (DDP): a ring all-reduce moves ``2 (n - 1) / n`` times the gradient
  bytes through the slowest link; with hierarchical NCCL the inter-node part runs over each
  GPU's share of the node's network bandwidth;
- the global-batch gathers (student features with their gradient, teacher features and
  image ids for the losses and the queue): ``(n - 1) / n`` of the gathered bytes, twice for
  the student features (forward and backward).

Nothing here is measured on a GPU: the bandwidths and TFLOP/s are assumptions printed with the
table (change them with the options). Also prints the feature-store size and the read rate
training needs for COCO and for 100M pairs.

    .venv/bin/python benchmarks/scaling_note.py
    .venv/bin/python benchmarks/scaling_note.py --tflops 150 --inter-gbps 50 --grad-bytes 2
"""

from __future__ import annotations

import argparse
import json


def student_costs(dim: int = 768) -> tuple[int, float]:
    """(parameters, forward + backward FLOPs per pair) of the paper's student (paper_costs.py)."""
    from paper_costs import paper_student, step_flops  # the script beside this one

    student = paper_student(dim).train()
    return sum(p.numel() for p in student.parameters()), step_flops(student, 1, counted=2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-gpu-batch", type=int, default=64)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--tflops", type=float, default=300.0, help="sustained bf16 TFLOP/s per GPU (assumed)")
    p.add_argument("--intra-gbps", type=float, default=300.0, help="NVLink bus GB/s per GPU (assumed)")
    p.add_argument(
        "--inter-gbps", type=float, default=25.0, help="network GB/s per GPU across nodes (assumed: 200 Gb/s per GPU)"
    )
    p.add_argument("--grad-bytes", type=int, default=4, help="bytes per gradient element (4: fp32 DDP buckets)")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument(
        "--train-pairs-per-s",
        type=float,
        default=None,
        help="read rate to size the store for (default: what the largest run consumes)",
    )
    args = p.parse_args()

    params, flops_per_pair = student_costs(args.dim)
    compute_s = args.per_gpu_batch * flops_per_pair / (args.tflops * 1e12)
    grad_bytes = params * args.grad_bytes
    rows = []
    for nodes in args.nodes:
        g = nodes * args.gpus_per_node
        global_batch = g * args.per_gpu_batch
        # Hierarchical ring: inside the node over NVLink, across nodes over the network.
        intra = 2 * (args.gpus_per_node - 1) / args.gpus_per_node * grad_bytes / (args.intra_gbps * 1e9)
        inter = (
            0.0 if nodes == 1 else 2 * (nodes - 1) / nodes * grad_bytes / args.gpus_per_node / (args.inter_gbps * 1e9)
        )
        allreduce_s = intra + inter
        # Gathers: student features (fwd + bwd), teacher features, image ids, float32 / int64.
        gathered = global_batch * (2 * args.dim * 4 * 2 + 2 * args.dim * 4 + 8)
        bw = args.intra_gbps if nodes == 1 else args.inter_gbps
        gather_s = (g - 1) / g * gathered / (bw * 1e9)
        rows.append(
            {
                "nodes": nodes,
                "gpus": g,
                "global_batch": global_batch,
                "compute_ms": compute_s * 1e3,
                "allreduce_ms": allreduce_s * 1e3,
                "gather_ms": gather_s * 1e3,
                "comm_over_compute": (allreduce_s + gather_s) / compute_s,
                "pairs_per_s": global_batch / max(compute_s, allreduce_s + gather_s),
            }
        )

    print(
        f"paper student: {params / 1e6:.1f}M parameters, {flops_per_pair / 1e9:.1f} GFLOP per pair (fwd+bwd); "
        f"assumed {args.tflops:g} TFLOP/s per GPU, NVLink {args.intra_gbps:g} GB/s, network {args.inter_gbps:g} GB/s "
        f"per GPU, {args.grad_bytes}-byte gradients ({grad_bytes / 1e9:.2f} GB), {args.per_gpu_batch} pairs per GPU\n"
    )
    print(
        "| nodes | GPUs | global batch | compute ms | grad all-reduce ms | feature gathers ms | comm / compute | pairs/s, communication overlapped with compute |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['nodes']} | {r['gpus']} | {r['global_batch']:,} | {r['compute_ms']:.0f} | {r['allreduce_ms']:.0f} | "
            f"{r['gather_ms']:.2f} | {r['comm_over_compute']:.2f} | {r['pairs_per_s']:,.0f} |"
        )

    largest = rows[-1]
    need = args.train_pairs_per_s or largest["pairs_per_s"]
    per_gpu = 2 * need / largest["gpus"]
    print(
        f"\nreading the store at {need:,.0f} pairs/s ({largest['gpus']} GPUs): every pair reads one image row "
        f"and one caption row, {per_gpu:,.0f} rows/s per GPU ({per_gpu * args.dim * 2 / 1e6:.1f} MB/s in float16)"
    )
    print("\n| data | store rows | float32 | float16 | rows/s in all | MB/s in all (float16) |")
    print("|---|---|---|---|---|---|")
    stores = {
        "COCO Karpathy train (113,287 images, 566,747 captions)": 113_287 + 566_747,
        "100M pairs (one caption per image)": 200_000_000,
    }
    out = {}
    for name, n_rows in stores.items():
        f32 = n_rows * args.dim * 4 / 1e9
        # every pair reads one image row and one caption row
        rate = 2 * need
        mb_s = rate * args.dim * 2 / 1e6
        out[name] = {
            "rows": n_rows,
            "gb_float32": f32,
            "gb_float16": f32 / 2,
            "rows_per_s": rate,
            "rows_per_s_per_gpu": per_gpu,
            "mb_per_s_fp16": mb_s,
        }
        print(f"| {name} | {n_rows:,} | {f32:,.1f} GB | {f32 / 2:,.1f} GB | {rate:,.0f} | {mb_s:,.0f} |")
    print(
        json.dumps(
            {
                "params": params,
                "gflops_per_pair": flops_per_pair / 1e9,
                "rows": rows,
                "stores": out,
                "assumptions": vars(args),
            }
        )
    )


if __name__ == "__main__":
    main()
