"""Regenerate the cached LoRA sweep of notebook 02 (section 5): rank {4, 8, 16, 32} × attention-only vs
all-linear on the preset's model, a few training steps each; validation loss and seconds per step.

    python benchmarks/lora_sweep.py                    # cpu-smoke, 1 torch thread
    python benchmarks/lora_sweep.py --preset colab-t4  # on a GPU

Writes benchmarks/results/lora_sweep_<preset>.json, which the notebook loads instead of recomputing.
"""

from __future__ import annotations

import argparse
import os
import time

from ragcourse import lora, runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=os.environ.get("RAGCOURSE_PRESET", "cpu-smoke"))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads on a CPU (1 is steadier on a shared machine; 0 keeps torch's default)",
    )
    parser.add_argument("--steps", type=int, default=lora.SweepSettings().steps)
    args = parser.parse_args()
    overrides = {"training": {"torch_threads": args.threads}} if args.threads else {}
    cfg = runtime.start(args.preset, quiet=True, **overrides)
    start = time.perf_counter()
    sweep = lora.load_or_run_sweep(cfg, recompute=True, settings=lora.SweepSettings(steps=args.steps))
    print(lora.sweep_table(sweep).to_string(index=False))
    print(
        f"base model validation loss {sweep['val_loss_base']}; {time.perf_counter() - start:.0f} s; "
        f"written to {lora.sweep_cache_path(cfg)}"
    )


if __name__ == "__main__":
    main()
