"""``ragcourse`` command line: the same code the notebooks run, one subcommand per pipeline step."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="configs/<preset>.yaml (default: $RAGCOURSE_PRESET or picked from the hardware)")
    p.add_argument("--config", help="your own YAML layered over the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one value, e.g. --set training.max_steps=5 (repeatable)")


def _start(args: argparse.Namespace, quiet: bool = True):
    from .config import parse_overrides
    from .runtime import start

    return start(args.preset, args.config, quiet=quiet, **parse_overrides(args.overrides))


def cmd_config(args: argparse.Namespace) -> int:
    _start(args, quiet=False)
    return 0


def cmd_prepare_models(args: argparse.Namespace) -> int:
    import time

    from .models import resolve_model

    cfg = _start(args)
    for ref in (cfg.model.name, cfg.embedding.name):
        t0 = time.perf_counter()
        path = resolve_model(ref, cfg)
        print(f"{ref} -> {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from . import data
    from .models import load_tokenizer

    cfg = _start(args)
    teacher = data.teacher_generate_fn(cfg) if args.synthetic else None
    tokenizer = load_tokenizer(cfg)
    synthetic = None
    if teacher is not None:
        docs = data.load_documents(cfg.data.corpus_dir)
        chunks = data.chunk_documents(docs, cfg.data.chunk_size, cfg.data.chunk_overlap, data.token_counter(tokenizer))
        synthetic = data.generate_synthetic(data.pick_synthetic_chunks(chunks, cfg.data.synthetic_chunks, cfg.training.seed), teacher)
        print(f"synthetic pairs: {len(synthetic.accepted)} kept, {len(synthetic.rejected)} rejected")
    prepared = data.prepare(cfg, tokenizer, synthetic=synthetic)
    target = data.save_dataset(prepared, cfg)
    print(f"dataset: {', '.join(f'{s} {len(v)}' for s, v in prepared.examples.items())} -> {target}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    from accelerate import PartialState

    cfg = _start(args)
    target = train(cfg, resume=args.resume)
    state = PartialState()
    print(f"[process {state.process_index + 1}/{state.num_processes}] training done; adapter saved to {target}", flush=True)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .merge import folder_mb, merge, save_merged
    from .models import load_tokenizer
    from .train import ensure_pad_token

    cfg = _start(args)
    tokenizer = load_tokenizer(cfg, str(cfg.artifact_dir("adapter")))
    ensure_pad_token(tokenizer)
    _, merged = merge(cfg)
    target = save_merged(merged, tokenizer, cfg)
    print(f"merged model ({folder_mb(target):,.0f} MB) saved to {target}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from .rag import load_or_build_index

    cfg = _start(args)
    index = load_or_build_index(cfg, rebuild=args.rebuild)
    print(f"index: {len(index.docstore.docs)} chunks in {cfg.artifact_dir('index')}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import run

    cfg = _start(args)
    folder = run(cfg, judge_samples=args.judge_samples)
    print((folder / "report.md").read_text())
    print(f"report, CSV and JSON in {folder}")
    return 0


def _adapter_stale_reason(cfg) -> str | None:
    """Why the saved adapter does not match the dataset and the settings it would be trained with (None: reuse it)."""
    from .artifacts import file_hashes, stale_reason

    dataset_manifest = cfg.artifact_dir("dataset") / "manifest.json"
    inputs = file_hashes([dataset_manifest]) if dataset_manifest.is_file() else {}
    settings = cfg.to_dict()
    reasons = (stale_reason(cfg.artifact_dir("adapter"), inputs, settings[s], s) for s in ("model", "lora", "quantization", "training"))
    return next((r for r in reasons if r), None)


def _reuse_or_build_dataset(cfg) -> int:
    from .data import load_dataset_artifact

    dataset = load_dataset_artifact(cfg)  # rebuilt only when missing or stale
    print("dataset: " + ", ".join(f"{split} {rows.num_rows}" for split, rows in dataset.items()))
    return 0


def cmd_run_all(args: argparse.Namespace) -> int:
    """data -> train -> merge -> index -> eval; an up-to-date dataset, adapter or merged model is reused."""
    import time

    from .rag import merged_stale_reason

    cfg = _start(args)
    args.synthetic, args.resume, args.rebuild, args.judge_samples = False, False, args.force, None
    steps = [("data", cmd_data if args.force else lambda a: _reuse_or_build_dataset(cfg), None),
             ("train", cmd_train, _adapter_stale_reason), ("merge", cmd_merge, merged_stale_reason),
             ("index", cmd_index, None), ("eval", cmd_eval, None)]
    for name, func, stale_reason in steps:
        reason = stale_reason(cfg) if stale_reason else None
        if stale_reason and reason is None and not args.force:
            print(f"== {name}: up to date, reusing it (--force redoes it)")
            continue
        print(f"== {name}" + (f" ({reason})" if reason else ""), flush=True)
        t0 = time.perf_counter()
        if func(args) != 0:
            return 1
        print(f"== {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


def cmd_notebooks(args: argparse.Namespace) -> int:
    from .nbrun import run_all

    preset = args.preset or "cpu-smoke"
    runs = run_all(preset, args.only or None)
    total = sum(r.seconds for r in runs)
    print(f"{len(runs)} notebooks, {total:.0f} s in all; executed copies in outputs/{preset}/notebooks/")
    return 0 if runs and all(r.ok for r in runs) else 1


def cmd_learner_copies(args: argparse.Namespace) -> int:
    from .workshop import stale_learner_copies, write_learner_copies

    try:
        if args.check:
            stale = stale_learner_copies(args.src, args.dst)
            for name in stale:
                print(f"stale learner copy: {args.dst}/{name}")
            if stale:
                print("regenerate them with: ragcourse learner-copies", file=sys.stderr)
            return 1 if stale else 0
        changed = write_learner_copies(args.src, args.dst)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{len(changed)} learner cop{'y' if len(changed) == 1 else 'ies'} updated in {args.dst}"
          + "".join(f"\n  {p.name}" for p in changed))
    return 0


def cmd_setup_cells(args: argparse.Namespace) -> int:
    """Write (or with --check, compare) every notebook's generated Colab setup cell."""
    from .workshop import setup_cell_problems, write_setup_cells

    if args.check:
        problems = setup_cell_problems(args.src)
        for line in problems:
            print(line)
        return 1 if problems else 0
    changed = write_setup_cells(args.src)
    print(f"{len(changed)} notebook(s) got the generated setup cell" + "".join(f"\n  {p.name}" for p in changed))
    return 0


def _hub_steps(args: argparse.Namespace) -> list[str]:
    from .hub import STEPS

    return args.steps or list(STEPS)


def cmd_push(args: argparse.Namespace) -> int:
    """Upload built artifacts to a Hub repository (token: $HF_TOKEN or Colab's secrets)."""
    from .hub import push

    cfg = _start(args)
    built = [s for s in _hub_steps(args) if (cfg.output_dir / s / "manifest.json").is_file()]
    for step in built:
        print(f"{step} -> {push(cfg, step, args.repo)}")
    if not built:
        print(f"nothing to push: no artifact in {cfg.output_dir}", file=sys.stderr)
    return 0 if built else 1


def cmd_pull(args: argparse.Namespace) -> int:
    """Download artifacts from a Hub repository into outputs/<preset>/."""
    from .hub import pull

    cfg = _start(args)
    missing = []
    for step in _hub_steps(args):
        try:
            print(f"{step} <- {args.repo}: {pull(cfg, step, args.repo)}")
        except FileNotFoundError as exc:
            missing.append(step)
            print(exc, file=sys.stderr)
    return 1 if missing and args.steps else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragcourse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="print the resolved config")
    _config_args(p)
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("prepare-models", help="convert/check the preset's models (embedded ones are converted once)")
    _config_args(p)
    p.set_defaults(func=cmd_prepare_models)
    p = sub.add_parser("data", help="build the RAFT dataset (notebook 01) into outputs/<preset>/dataset")
    _config_args(p)
    p.add_argument("--synthetic", action="store_true", help="also ask the teacher model (data.teacher) for synthetic pairs")
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("train", help="train the LoRA/QLoRA adapter (notebook 03); works under `accelerate launch`")
    _config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("merge", help="merge the adapter into a fresh 16-bit base and save it (notebook 04)")
    _config_args(p)
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser("index", help="build (or reuse) the persisted retrieval index (notebook 05)")
    _config_args(p)
    p.add_argument("--rebuild", action="store_true")
    p.set_defaults(func=cmd_index)
    p = sub.add_parser("eval", help="four-way evaluation and report under outputs/<preset>/eval (notebook 06)")
    _config_args(p)
    p.add_argument("--judge-samples", type=int, default=None, help="LLM-judge samples (default: evaluation.judge_samples)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("run-all", help="the whole pipeline for your config: data, train, merge, index, eval")
    _config_args(p)
    p.add_argument("--force", action="store_true", help="redo steps whose artifacts exist")
    p.set_defaults(func=cmd_run_all)
    p = sub.add_parser("notebooks", help="execute the course notebooks in order, in fresh kernels")
    p.add_argument("--preset", default=None)
    p.add_argument("--only", nargs="*", help="notebook names to run (default: all)")
    p.set_defaults(func=cmd_notebooks)
    p = sub.add_parser("learner-copies", help="write the notebooks with solution cells blanked (workshop kit)")
    p.add_argument("--src", default="notebooks", help="course notebooks (default: notebooks)")
    p.add_argument("--dst", default="notebooks/learner", help="where the learner copies go (default: notebooks/learner)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 and list the copies that are stale")
    p.set_defaults(func=cmd_learner_copies)
    p = sub.add_parser("setup-cells", help="write the generated Colab setup cell into every notebook")
    p.add_argument("--src", default="notebooks", help="course notebooks (default: notebooks)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 and list the notebooks that drift")
    p.set_defaults(func=cmd_setup_cells)
    for name, func, verb in (("push", cmd_push, "upload outputs/<preset>/<step> to"),
                             ("pull", cmd_pull, "download <preset>/<step> from")):
        p = sub.add_parser(name, help=f"{verb} a Hugging Face Hub repository (token: $HF_TOKEN or Colab secrets)")
        _config_args(p)
        p.add_argument("--repo", required=True, help="Hub repository id, e.g. you/ragcourse-artifacts")
        p.add_argument("steps", nargs="*", help="dataset, adapter, merged, index (default: all there are)")
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .config import ConfigError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
