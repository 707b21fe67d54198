"""Check the memory estimator of notebook 02 (section 4) against measurements on this CPU.

For a few LoRA setups of the embedded SmolLM2-135M (fp32 compute, torch AdamW, random tokens), each in a
fresh process: the predicted peak (ragcourse.memory.estimate) and the measured peak resident memory
("live": glibc returns freed memory, and for 4-bit the unquantized weights are copied out of the
memory-mapped checkpoint; this is what the estimate predicts), with glibc's default allocator (freed blocks
kept: the CPU's "reserved"), and for 4-bit with the checkpoint left mapped as transformers leaves it (the
fp32 pages read while quantizing stay resident). Also the published figures.

    OMP_NUM_THREADS=1 python benchmarks/memory_estimator.py

Writes benchmarks/results/memory_estimator.json.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

from ragcourse import memory, runtime

RESULTS = Path(__file__).resolve().parent / "results" / "memory_estimator.json"
COMMON = dict(
    model="embedded:smollm2-135m-instruct",
    device="cpu",
    compute_dtype="float32",
    loss="full",
    padded=False,
    optimizer="adamw_torch",
    batch_size=4,
)
SETUPS = {
    "fp32, r=8 attention, 4x128 tokens": dict(
        weights="float32", lora_r=8, target_modules="attention", seq_len=128, gradient_checkpointing=False
    ),
    "fp32, r=16 all-linear, 4x256 tokens": dict(
        weights="float32", lora_r=16, target_modules="all-linear", seq_len=256, gradient_checkpointing=False
    ),
    "fp32, r=16 all-linear, 4x256 tokens, checkpointing": dict(
        weights="float32", lora_r=16, target_modules="all-linear", seq_len=256, gradient_checkpointing=True
    ),
    "4-bit NF4+DQ, r=8 attention, 4x128 tokens": dict(
        weights="nf4-dq", lora_r=8, target_modules="attention", seq_len=128, gradient_checkpointing=False
    ),
}


def main() -> None:
    rows = []
    for label, setup in SETUPS.items():
        spec = memory.MemorySpec(**COMMON, **setup)
        row = {
            "setup": label,
            "spec": asdict(spec),
            "predicted_gib": round(memory.estimate(spec).total / memory.GIB, 3),
        }
        variants = {"live": {}, "default_malloc": {"return_freed_memory": False}}
        if spec.quantized:
            variants["mapping_kept"] = {"release_checkpoint_mapping": False}
        for key, options in variants.items():
            m = memory.measure_cpu_training_peak(spec, steps=3, threads=1, **options)
            row[f"measured_{key}_gib"] = round(m["peak_rss_bytes"] / memory.GIB, 3)
            row[f"error_{key}_%"] = round(100 * m["relative_error"], 1)
            if key == "live":
                row["seconds_per_step"] = round(m["seconds_per_step"], 2)
                row["rss_after_imports_gib"] = round(m["rss_after_imports_bytes"] / memory.GIB, 3)
                row["predicted_breakdown_gib"] = m["predicted_breakdown_gib"]
            else:
                row[f"checkpoint_mapped_{key}_gib"] = round(m["checkpoint_mapped_bytes"] / memory.GIB, 3)
        others = ", ".join(
            f"{k.replace('_', ' ')} {row[f'measured_{k}_gib']:.2f} ({row[f'error_{k}_%']:+.1f}%)"
            for k in variants
            if k != "live"
        )
        print(
            f"{label:52s} predicted {row['predicted_gib']:.2f} GiB, measured {row['measured_live_gib']:.2f} "
            f"({row['error_live_%']:+.1f}%); {others}",
            flush=True,
        )
        rows.append(row)
    published = memory.published_comparison().to_dict(orient="records")
    result = {
        "measured_on": f"{platform.machine()} CPU, 1 torch thread; peak RSS (VmHWM) of a fresh process per run",
        "steps": 3,
        "cpu_overhead_gib": memory.CPU_OVERHEAD_BYTES / memory.GIB,
        "cpu": rows,
        "published": published,
        "versions": runtime.versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
