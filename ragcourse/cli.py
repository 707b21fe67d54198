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


def cmd_notebooks(args: argparse.Namespace) -> int:
    from .nbrun import run_all

    preset = args.preset or "cpu-smoke"
    runs = run_all(preset, args.only or None)
    total = sum(r.seconds for r in runs)
    print(f"{len(runs)} notebooks, {total:.0f} s in all; executed copies in outputs/{preset}/notebooks/")
    return 0 if runs and all(r.ok for r in runs) else 1


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
    p = sub.add_parser("notebooks", help="execute the course notebooks in order, in fresh kernels")
    p.add_argument("--preset", default=None)
    p.add_argument("--only", nargs="*", help="notebook names to run (default: all)")
    p.set_defaults(func=cmd_notebooks)
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
