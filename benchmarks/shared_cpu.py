"""A cpu-smoke training step and a generation, alone and beside a second busy process, per thread setting (issue 20).

Settings: torch threads 1 and 2 (``training.torch_threads``, applied by ``runtime.start``) × ``OMP_WAIT_POLICY`` unset
(libgomp spins a while before a waiting thread sleeps), ``PASSIVE`` (it sleeps at once) and short spin counts
(``GOMP_SPINCOUNT``, the course default's kind). Each setting is one run in a fresh process (the wait setting is read
once, when the OpenMP runtime starts), which measures alone, then busy:

1. load the preset's model as notebook 03 trains it (4-bit NF4, LoRA) and build the course's trainer;
2. ``--warmup`` steps, not counted, then ``--steps`` steps **alone**, then one RAG prompt answered alone with
   ``--new-tokens`` new tokens (EOS held back, so every answer has the same length);
3. start the competitor, a stand-in for a second notebook kernel that trains: forward, backward and AdamW step of 4
   decoder layers of the model's width (576, 9 heads, MLP 1536) on 4 × 256 tokens, in a loop, with torch's defaults
   (2 threads, no wait policy; ``--competitor same`` gives it this run's threads and policy instead, as a second course
   kernel would have);
4. ``--steps`` more steps **busy** (fewer once they pass ``--max-train-s``; at least one), then the same prompt again
   (cut at ``--max-generate-s`` and extrapolated to the full length);
5. stop the competitor and record how fast it ran meanwhile, against its speed alone (measured once beforehand).

The busy steps train on the batches that follow the alone ones, so their token counts differ a little (both shown);
every setting sees the same batches in the same order.

    nice -n 19 python benchmarks/shared_cpu.py              # 10 runs, about 2.5 min each on an idle 2-core machine
    python benchmarks/shared_cpu.py --steps 1 --warmup 0 --new-tokens 4 --only t1-default

Run it when nothing else uses the machine: the "alone" rows must be alone. Writes
benchmarks/results/shared_cpu.json and .md (``shared_cpu_same.*`` with ``--competitor same``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_common as common  # noqa: E402

THREADS = (1, 2)
# "spin-N": OMP_WAIT_POLICY unset and libgomp's GOMP_SPINCOUNT=N, a waiting thread spins N rounds, then sleeps (unset,
# libgomp spins 300,000 rounds; PASSIVE, none): a middle ground between the two measured policies.
POLICIES = ("default", "PASSIVE", "spin-3000", "spin-10000", "spin-30000")
COMPETITOR = """
import signal, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
layer = torch.nn.TransformerEncoderLayer(576, 9, 1536, dropout=0.0, batch_first=True, norm_first=True)
model = torch.nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randn(4, 256, 576)
mask = torch.nn.Transformer.generate_square_subsequent_mask(256)
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
limit = float(sys.argv[2]) if len(sys.argv) > 2 else float("inf")
n, t0 = 0, time.perf_counter()
print("ready", flush=True)
while not stop and time.perf_counter() - t0 < limit:
    opt.zero_grad()
    model(x, is_causal=True, mask=mask).square().mean().backward()
    opt.step()
    n += 1
print(n, time.perf_counter() - t0, flush=True)
"""


def policy_env(policy: str) -> dict[str, str]:
    """This process's environment (native instruction sets) with ``OMP_WAIT_POLICY`` set, removed for default, or
    removed with ``GOMP_SPINCOUNT`` set for ``spin-N``."""
    if policy.startswith("spin-"):
        extra = {"GOMP_SPINCOUNT": policy.removeprefix("spin-")}
    else:
        extra = {"OMP_WAIT_POLICY": policy} if policy != "default" else {}
    return common.mode_env("native", extra, drop=("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT"))


class Competitor:
    """The second busy process: started and stopped around the measured part of a run."""

    def __init__(self, threads: int, policy: str):
        self.threads, self.policy = threads, policy
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", COMPETITOR, str(self.threads)],
            env=policy_env(self.policy),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # "ready": torch imported, the loop begins
        time.sleep(1.0)

    def stop(self) -> dict[str, Any]:
        if self.proc is None:
            return {}
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=60)
        iterations, seconds = out.split()[-2:]
        return {
            "iterations": int(iterations),
            "seconds": round(float(seconds), 1),
            "it_per_s": round(int(iterations) / float(seconds), 2),
        }


def competitor_alone(threads: int, policy: str, seconds: float = 8.0) -> float:
    """The competitor's iterations per second with the machine to itself."""
    out = subprocess.run(
        [sys.executable, "-c", COMPETITOR, str(threads), str(seconds)],
        env=policy_env(policy),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    iterations, elapsed = out.split()[-2:]
    return round(int(iterations) / float(elapsed), 2)


# -- the worker: one setting, alone or busy ----------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ragcourse import models, runtime
    from ragcourse.train import ensure_pad_token

    cfg = runtime.start(
        "cpu-smoke", quiet=True, paths={"output_root": common.BENCH_ROOT}, training={"torch_threads": args.threads}
    )
    tokenizer = models.load_tokenizer(cfg)
    ensure_pad_token(tokenizer)
    prompt = common.test_prompts(cfg, tokenizer, 1)
    competitor = Competitor(args.competitor_threads, args.competitor_policy)
    alone_end = args.warmup + args.steps
    out: dict[str, Any] = {}

    def after_step(log: list[dict[str, Any]], model: Any) -> bool:
        if len(log) == alone_end:  # the alone part is done: answer alone, then make the machine busy
            out["alone"] = {"train": common.step_stats(log[args.warmup :], args.steps), "generate": generate(model)}
            print(
                f"alone: {out['alone']['train']['s_per_step']:.2f} s/step, "
                f"{out['alone']['generate']['s_per_prompt']:.2f} s per answer",
                flush=True,
            )
            competitor.start()
            return False
        busy = log[alone_end:]
        return bool(busy) and sum(s["wall_s"] for s in busy) >= args.max_train_s

    def generate(model: Any) -> dict[str, Any]:
        return common.fixed_generation(model, tokenizer, prompt, args.new_tokens, 1, max_time=args.max_generate_s)

    t0 = time.perf_counter()
    try:
        trainer, log = common.course_training(cfg, tokenizer, alone_end + args.steps, after_step)
        out["busy"] = {"train": common.step_stats(log[alone_end:], args.steps), "generate": generate(trainer.model)}
    finally:
        out["competitor"] = competitor.stop()
    print(
        f"busy: {out['busy']['train']['s_per_step']:.2f} s/step, "
        f"{out['busy']['generate']['s_per_prompt']:.2f} s per answer",
        flush=True,
    )
    return {
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        **out,
        "worker_s": round(time.perf_counter() - t0, 1),
        "libraries": common.library_record(),
    }


# -- the parent: every setting, then the table -------------------------------------------------------------------


def setting_name(threads: int, policy: str) -> str:
    return f"t{threads}-{policy.lower()}"


MEASURES = (("alone", "train"), ("alone", "generate"), ("busy", "train"), ("busy", "generate"))


def seconds_of(run: dict[str, Any], when: str, part: str) -> float | None:
    """Seconds per training step or per answer of one run, alone or busy; None where it failed."""
    if "error" in run or when not in run:
        return None
    return run[when][part]["s_per_step" if part == "train" else "s_per_prompt"]


def recommendation(runs: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The setting with the lowest summed relative cost over the four measures (training and generation, alone and
    busy; each time divided by the best setting's time in that measure): fast alone and least hurt when shared."""
    times = {name: [seconds_of(run, *m) for m in MEASURES] for name, run in runs.items()}
    times = {name: t for name, t in times.items() if all(t)}
    if not times:
        return None
    best = [min(t[i] for t in times.values()) for i in range(len(MEASURES))]
    scores = {name: round(sum(v / b for v, b in zip(t, best)), 2) for name, t in times.items()}
    chosen = min(scores, key=scores.get)
    return {
        "setting": chosen,
        "torch_threads": runs[chosen]["threads"],
        "omp_wait_policy": runs[chosen]["policy"],
        "scores": scores,
    }


def markdown(result: dict[str, Any]) -> str:
    from ragcourse.hardware import DEFAULT_GOMP_SPINCOUNT, DEFAULT_TORCH_THREADS

    s, c = result["settings"], result["competitor"]
    lines = [
        f"cpu-smoke on a shared CPU: {result['cpu']['model']}, {result['cpu']['cores']} cores "
        f"({result['created_at']}); "
        f"one fresh process per setting, alone then busy. Training: the course's trainer on the 4-bit base, batch "
        f"{s['batch_size']}, {s['warmup']} warm-up step(s) not counted, then {s['steps']} step(s) alone and up to "
        f"{s['steps']} busy. Generation: one RAG prompt, {s['new_tokens']} new tokens. Competitor: {c['description']}; "
        "alone it ran "
        + ", ".join(f"{v} it/s at {k}" for k, v in c["alone_it_per_s"].items())
        + "."
        + (f" {result['note']}" if result["note"] else ""),
        "",
        "| torch threads | wait (OMP_WAIT_POLICY or spin-N: GOMP_SPINCOUNT=N) | train s/step alone | busy | slowdown "
        "| tokens/step alone, busy "
        "| answer s alone | busy | slowdown | competitor speed while busy | CPU busy before |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in result["runs"].items():
        head = f"| {run['threads']} | {run['policy']} | "
        if "error" in run:
            lines.append(head + f"{run['error']} |" + " |" * 9)
            continue
        cells = []
        for part in ("train", "generate"):
            alone, busy = seconds_of(run, "alone", part), seconds_of(run, "busy", part)
            cut = " (cut)" if run["busy"][part]["cut_short"] else ""
            cells += [f"{alone:.2f}", f"{busy:.2f}{cut}", f"{busy / alone:.1f}x"]
            if part == "train":
                cells.append(", ".join(f"{run[w]['train']['tokens_per_step']:.0f}" for w in ("alone", "busy")))
        speed = run["competitor"].get("it_per_s")
        alone_speed = c["alone_it_per_s"].get(run["competitor_setting"])
        cells.append(f"{100 * speed / alone_speed:.0f}%" if speed and alone_speed else "–")
        cells.append(f"{run['busy_percent_before']:.0f}%")
        lines.append(head + " | ".join(cells) + " |")
    lines += [
        "",
        "(cut): fewer busy steps than asked (past the time cap), or the busy answer stopped early and was "
        "extrapolated to the full length. Competitor speed: its iterations per second while this run was busy, "
        "against its speed alone.",
    ]
    rec = result.get("recommendation")
    if rec:
        lines += [
            "",
            "Summed relative cost over the four measures (train and answer, alone and busy; each time ÷ the "
            "best setting's, so 4.0 would be best everywhere): "
            + ", ".join(f"{k} {v}" for k, v in sorted(rec["scores"].items(), key=lambda kv: kv[1]))
            + f". Lowest: **torch threads {rec['torch_threads']}, {rec['omp_wait_policy']}**. "
            f"The package defaults now: `ragcourse.hardware.DEFAULT_TORCH_THREADS` {DEFAULT_TORCH_THREADS} "
            f"(None: torch's own, one thread per core), `DEFAULT_GOMP_SPINCOUNT` {DEFAULT_GOMP_SPINCOUNT}.",
        ]
    before = [r["busy_percent_before"] for r in result["runs"].values()]
    if before and max(before) > 25:
        lines += [
            "",
            f"**The machine was not idle** before a run (up to {max(before):.0f}% busy): its alone rows "
            "were not alone.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=1, help="training steps not counted (default 1)")
    parser.add_argument("--steps", type=int, default=2, help="measured training steps alone, and busy (default 2)")
    parser.add_argument("--max-train-s", type=float, default=30.0, help="stop the busy steps after this (>= 1 step)")
    parser.add_argument("--new-tokens", type=int, default=0, help="generated tokens (default: the preset's)")
    parser.add_argument("--max-generate-s", type=float, default=20.0, help="cut a generation after this")
    parser.add_argument(
        "--competitor",
        choices=("default", "same"),
        default="default",
        help="default: 2 threads, no wait policy; same: this run's threads and policy",
    )
    parser.add_argument("--only", nargs="*", help="settings to run, e.g. t1-default t2-passive (default: all)")
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the .json, run nothing")
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--competitor-threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--competitor-policy", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        common.write_worker_result(args.worker_out, worker(args))
        return
    stem = "shared_cpu" + ("_same" if args.competitor == "same" else "")
    results_json, results_md = common.RESULTS / f"{stem}.json", common.RESULTS / f"{stem}.md"
    if args.markdown_only:
        results_md.write_text(markdown(json.loads(results_json.read_text())), encoding="utf-8")
        return
    from ragcourse import pipeline, runtime

    start = time.perf_counter()
    cfg = runtime.start("cpu-smoke", quiet=True, paths={"output_root": common.BENCH_ROOT})
    pipeline.ensure(cfg, "dataset", quiet=True)
    new_tokens = args.new_tokens or cfg.model.max_new_tokens
    same = args.competitor == "same"
    result: dict[str, Any] = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "note": args.note,
        "cpu": common.cpu_record(),
        "settings": {
            "warmup": args.warmup,
            "steps": args.steps,
            "max_train_s": args.max_train_s,
            "new_tokens": new_tokens,
            "max_generate_s": args.max_generate_s,
            "batch_size": cfg.training.per_device_train_batch_size,
        },
        "competitor": {
            "kind": args.competitor,
            "alone_it_per_s": {},
            "description": (
                "a 4-layer transformer training loop with the run's threads and wait policy"
                if same
                else "a 4-layer transformer training loop with 2 threads and no wait policy"
            ),
        },
        "versions": runtime.versions(),
        "runs": {},
    }
    for threads in THREADS:
        for policy in POLICIES:
            name = setting_name(threads, policy)
            if args.only and name not in args.only:
                continue
            rival = (threads, policy) if same else (2, "default")
            rival_name = setting_name(*rival)
            if rival_name not in result["competitor"]["alone_it_per_s"]:
                result["competitor"]["alone_it_per_s"][rival_name] = competitor_alone(*rival)
            before = common.machine_busy(2.0)
            print(
                f"== {name} (CPU {before}% busy before; competitor alone "
                f"{result['competitor']['alone_it_per_s'][rival_name]} it/s)",
                flush=True,
            )
            worker_args = [
                "--threads",
                str(threads),
                "--warmup",
                str(args.warmup),
                "--steps",
                str(args.steps),
                "--max-train-s",
                str(args.max_train_s),
                "--new-tokens",
                str(new_tokens),
                "--max-generate-s",
                str(args.max_generate_s),
                "--competitor-threads",
                str(rival[0]),
                "--competitor-policy",
                rival[1],
            ]
            run = common.run_worker(Path(__file__), worker_args, policy_env(policy), timeout=1200)
            result["runs"][name] = {
                **run,
                "threads": threads,
                "policy": policy,
                "busy_percent_before": before,
                "competitor_setting": rival_name,
            }
            result["recommendation"] = recommendation(result["runs"])
            common.write_results(result, results_json, markdown)
    result["total_s"] = round(time.perf_counter() - start, 1)
    common.write_results(result, results_json, markdown, final=True)


if __name__ == "__main__":
    main()
