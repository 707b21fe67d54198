"""How accurate is the memory estimator (notebook 02, section 4) on this CPU? Predicted vs measured peak, every setup.

Collects every training configuration whose peak memory was measured on this machine kind and sets the current
estimate (``ragcourse.memory.estimate``) beside it, as a relative error ``(predicted - measured) / measured``:

* ``benchmarks/results/memory_estimator.json`` (``benchmarks/memory_estimator.py``): fresh process per setup, random
  tokens, peak RSS with freed memory returned to the OS ("live", what the estimate predicts), with glibc's default
  allocator (freed blocks kept: the CPU's "reserved"), and for 4-bit with the checkpoint mapping left in place;
* the setups this script measures itself (``--measure``; cached in the results file and reused otherwise): the
  cpu-smoke preset's own shape (4-bit, 4 x 448 tokens) and a bf16 base, which the file above does not cover;
* the training table of ``/work/shared/FIELD-NOTES.md`` (2026-11-26): hand measurements with another harness
  (about 100 tokens per example, allocator and loading path not recorded, "GB" as written there). Shown for
  context, not counted in the error summary.

    OMP_NUM_THREADS=1 python benchmarks/memory_accuracy.py            # tables from stored measurements
    OMP_NUM_THREADS=1 python benchmarks/memory_accuracy.py --measure  # re-measure this script's own setups (~2 min)

Writes benchmarks/results/memory_accuracy.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ESTIMATOR_RESULTS = HERE / "results" / "memory_estimator.json"
RESULTS_JSON = HERE / "results" / "memory_accuracy.json"
RESULTS_MD = HERE / "results" / "memory_accuracy.md"

COMMON = dict(
    model="embedded:smollm2-135m-instruct",
    device="cpu",
    compute_dtype="float32",
    loss="full",
    padded=False,
    optimizer="adamw_torch",
    batch_size=4,
    lora_r=8,
    target_modules="attention",
    gradient_checkpointing=False,
)
OWN_SETUPS = {
    "4-bit NF4+DQ, r=8 attention, 4x448 tokens (cpu-smoke shape)": dict(weights="nf4-dq", seq_len=448),
    "bf16, r=8 attention, 4x128 tokens": dict(weights="bfloat16", compute_dtype="bfloat16", seq_len=128),
}
# /work/shared/FIELD-NOTES.md, "Training on this CPU (SmolLM2-135M, LoRA r=8 on q/k/v/o, batch 4, ~100 tokens)".
FIELD_NOTES = [
    ("fp32 weights", dict(weights="float32"), 2.4),
    ("bf16 weights", dict(weights="bfloat16", compute_dtype="bfloat16"), 2.0),
    ("4-bit nf4 (bitsandbytes 0.50 on CPU)", dict(weights="nf4-dq"), 2.4),
    ("fp32 + gradient checkpointing", dict(weights="float32", gradient_checkpointing=True), 1.8),
    ("r=16 all-linear", dict(weights="float32", lora_r=16, target_modules="all-linear"), 2.9),
]


def _spec(values: dict[str, Any]):
    from ragcourse import memory

    return memory.MemorySpec(**{**COMMON, **values})


def _error(predicted: float, measured: float | None) -> float | None:
    return None if not measured else round(100 * (predicted - measured) / measured, 1)


def estimator_rows() -> list[dict[str, Any]]:
    from ragcourse import memory

    if not ESTIMATOR_RESULTS.is_file():
        return []
    stored = json.loads(ESTIMATOR_RESULTS.read_text(encoding="utf-8"))
    rows = []
    for r in stored["cpu"]:
        spec = memory.MemorySpec(**r["spec"])
        predicted = round(memory.estimate(spec).total / memory.GIB, 3)
        rows.append(
            {
                "setup": r["setup"],
                "source": "benchmarks/memory_estimator.py (" + stored.get("created_at", "?")[:10] + ")",
                "predicted_gib": predicted,
                "predicted_when_measured_gib": r["predicted_gib"],
                "measured_live_gib": r["measured_live_gib"],
                "error_live_%": _error(predicted, r["measured_live_gib"]),
                "measured_default_malloc_gib": r.get("measured_default_malloc_gib"),
                "error_default_malloc_%": _error(predicted, r.get("measured_default_malloc_gib")),
                "measured_mapping_kept_gib": r.get("measured_mapping_kept_gib"),
                "error_mapping_kept_%": _error(predicted, r.get("measured_mapping_kept_gib")),
                "seconds_per_step": r.get("seconds_per_step"),
                "counted": True,
            }
        )
    return rows


def own_rows(measure: bool, previous: dict[str, Any]) -> list[dict[str, Any]]:
    from ragcourse import memory

    cached = {
        r["setup"]: r
        for r in previous.get("rows", [])
        if r.get("source", "").startswith("benchmarks/memory_accuracy.py")
    }
    rows = []
    for label, values in OWN_SETUPS.items():
        spec = _spec(values)
        predicted = round(memory.estimate(spec).total / memory.GIB, 3)
        if measure:
            m = memory.measure_cpu_training_peak(spec, steps=2, threads=1)
            row = {
                "setup": label,
                "source": f"benchmarks/memory_accuracy.py ({time.strftime('%Y-%m-%d')})",
                "spec": asdict(spec),
                "measured_live_gib": round(m["peak_rss_bytes"] / memory.GIB, 3),
                "seconds_per_step": round(m["seconds_per_step"], 2),
                "rss_after_imports_gib": round(m["rss_after_imports_bytes"] / memory.GIB, 3),
            }
            print(f"measured {label}: {row['measured_live_gib']} GiB", flush=True)
        elif label in cached:
            row = {k: cached[label][k] for k in ("setup", "source", "spec", "measured_live_gib", "seconds_per_step")}
        else:
            print(f"not measured yet: {label} (run with --measure)")
            continue
        row.update(
            {
                "predicted_gib": predicted,
                "error_live_%": _error(predicted, row["measured_live_gib"]),
                "predicted_breakdown_gib": {k: round(v, 3) for k, v in memory.estimate(spec).breakdown().items()},
                "counted": True,
            }
        )
        rows.append(row)
    return rows


def field_note_rows() -> list[dict[str, Any]]:
    from ragcourse import memory

    rows = []
    for label, values, measured_gb in FIELD_NOTES:
        spec = _spec({**values, "seq_len": 100})
        predicted = round(memory.estimate(spec).total / memory.GIB, 3)
        rows.append(
            {
                "setup": f"{label}, 4x~100 tokens",
                "source": "FIELD-NOTES.md (other harness)",
                "predicted_gib": predicted,
                "measured_live_gib": None,
                "measured_default_malloc_gib": measured_gb,  # peak RSS as written ("GB"), allocator not recorded
                "error_default_malloc_%": _error(predicted, measured_gb),
                "error_if_GB_is_1e9_%": _error(predicted, measured_gb * 1e9 / memory.GIB),
                "counted": False,
            }
        )
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    live = [abs(r["error_live_%"]) for r in rows if r["counted"] and r.get("error_live_%") is not None]
    kept = [r["error_default_malloc_%"] for r in rows if r["counted"] and r.get("error_default_malloc_%") is not None]
    return {
        "setups_live": len(live),
        "mean_abs_error_live_%": round(statistics.mean(live), 1) if live else None,
        "max_abs_error_live_%": max(live) if live else None,
        "mean_error_default_malloc_%": round(statistics.mean(kept), 1) if kept else None,
    }


def markdown(result: dict[str, Any]) -> str:
    def f(v: float | None, spec: str = ".2f") -> str:
        return "–" if v is None else format(v, spec)

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v:+.1f}%"

    lines = [
        "Predicted vs measured peak memory (CPU, SmolLM2-135M, LoRA, torch AdamW, batch 4). Error = (predicted - "
        "measured) / measured. *Live*: peak RSS with freed memory returned to the OS (what the estimate models); "
        "*default malloc*: glibc's allocator as a plain run has it (the CPU's \"reserved\").",
        "",
        "| setup | source | predicted GiB | measured live GiB | error | measured default-malloc GiB | error |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['setup']} | {r['source']} | {f(r['predicted_gib'])} | {f(r.get('measured_live_gib'))} | "
            f"{pct(r.get('error_live_%'))} | {f(r.get('measured_default_malloc_gib'))} | "
            f"{pct(r.get('error_default_malloc_%'))} |"
        )
    s = result["summary"]
    lines += [
        "",
        f"Live peak: mean |error| {s['mean_abs_error_live_%']}% over {s['setups_live']} setups "
        f"(max {s['max_abs_error_live_%']}%). With glibc's default allocator the estimate is low by "
        f"{-s['mean_error_default_malloc_%'] if s['mean_error_default_malloc_%'] is not None else '–'}% on "
        "average: freed blocks stay in the heap. FIELD-NOTES rows are another harness (not counted).",
    ]
    if result.get("published"):
        lines += ["", "| published figure | published GiB | estimate GiB | error |", "|---|---:|---:|---:|"]
        for p in result["published"]:
            err = p["error_%"]
            comparable = p["tolerance_%"] == p["tolerance_%"] and p["tolerance_%"] is not None
            lines.append(
                f"| {p['source']}: {p['figure']} | {p['published_GiB']:.2f} | {p['estimate_GiB']:.2f} | "
                f"{'–' if err != err else f'{err:+.1f}%'}{'' if comparable else ' (not comparable)'} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", action="store_true", help="re-measure this script's own setups (fresh processes)")
    args = parser.parse_args()

    from ragcourse import memory, runtime

    previous = json.loads(RESULTS_JSON.read_text(encoding="utf-8")) if RESULTS_JSON.is_file() else {}
    rows = estimator_rows() + own_rows(args.measure, previous) + field_note_rows()
    published = memory.published_comparison().to_dict(orient="records")
    result = {
        "rows": rows,
        "summary": summary(rows),
        "published": published,
        "cpu_overhead_gib": memory.CPU_OVERHEAD_BYTES / memory.GIB,
        "versions": runtime.versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    RESULTS_MD.write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    print(f"written to {RESULTS_JSON} and {RESULTS_MD}")


if __name__ == "__main__":
    main()
