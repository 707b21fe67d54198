"""``ragcourse`` command line: the same code the notebooks run, one subcommand per pipeline step."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="configs/<preset>.yaml (default: $RAGCOURSE_PRESET or picked from the hardware)")
    p.add_argument("--config", help="your own YAML layered over the preset")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one value, e.g. --set training.max_steps=5 (repeatable)",
    )


# Commands that never load the preset's language model: they run on any machine, for a GPU preset too.
NO_MODEL_COMMANDS = ("config", "prepare-models", "index", "status", "push", "pull")


def _start(args: argparse.Namespace, quiet: bool = True):
    from .config import parse_overrides
    from .runtime import start

    loads_model = not (
        args.command in NO_MODEL_COMMANDS
        or getattr(args, "print_only", False)
        or (args.command == "data" and not args.synthetic)
    )
    return start(
        args.preset,
        args.config,
        quiet=quiet,
        writes=args.command != "config",
        loads_model=loads_model,
        **parse_overrides(args.overrides),
    )


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
    from . import data, pipeline
    from .models import load_tokenizer

    cfg = _start(args)
    if not args.synthetic:
        pipeline.ensure(cfg, "dataset", rebuild=True)
    else:  # notebook 01's optional teacher step, then the same dataset
        teacher = data.teacher_generate_fn(cfg)
        tokenizer = load_tokenizer(cfg)
        docs = data.load_documents(cfg.data.corpus_dir)
        chunks = data.chunk_documents(docs, cfg.data.chunk_size, cfg.data.chunk_overlap, data.token_counter(tokenizer))
        synthetic = data.generate_synthetic(
            data.pick_synthetic_chunks(chunks, cfg.data.synthetic_chunks, cfg.training.seed), teacher
        )
        print(f"synthetic pairs: {len(synthetic.accepted)} kept, {len(synthetic.rejected)} rejected")
        data.save_dataset(data.prepare(cfg, tokenizer, synthetic=synthetic), cfg)
    dataset = data.load_dataset(cfg)
    print(
        f"dataset: {', '.join(f'{s} {rows.num_rows}' for s, rows in dataset.items())} -> {cfg.artifact_dir('dataset')}"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from . import pipeline

    cfg = _start(args)
    target = pipeline.ensure(cfg, "adapter", rebuild=True, resume=args.resume)
    state = PartialState()
    print(
        f"[process {state.process_index + 1}/{state.num_processes}] training done; adapter saved to {target}",
        flush=True,
    )
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from . import pipeline
    from .artifacts import read_manifest
    from .merge import folder_mb

    cfg = _start(args)
    target = pipeline.ensure(cfg, "merged", rebuild=True)
    diff = (read_manifest(target) or {}).get("max_logit_difference")
    print(
        f"merged model ({folder_mb(target):,.0f} MB, max logit difference to the adapter {diff:.1e}) saved to {target}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """The merged model as GGUF (f16 + one quantized type) with an Ollama Modelfile (notebook 04, section 6)."""
    from . import export, pipeline

    export.require_llama_cpp()  # before any work: one line naming ragcourse[gguf]
    cfg = _start(args)
    pipeline.ensure(cfg, "merged", quiet=True)
    folder = export.export_gguf(cfg, args.quant, rebuild=args.rebuild)
    print("".join(f"{name}: {mb:,.0f} MB\n" for name, mb in export.file_mb(folder).items()), end="")
    name = f"ragcourse-{cfg.preset}"
    print(f"Ollama: cd {folder} && ollama create {name} -f Modelfile && ollama run {name}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from . import pipeline

    cfg = _start(args)
    index = pipeline.load(cfg, "index", rebuild=args.rebuild)
    print(f"index: {len(index.docstore.docs)} chunks in {cfg.artifact_dir('index')}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from . import evaluate, pipeline

    cfg = _start(args)
    for step in ("dataset", "index", "merged"):
        pipeline.ensure(cfg, step)
    folder = evaluate.run(cfg, judge_samples=args.judge_samples)
    print((folder / "report.md").read_text())
    print(f"report, CSV and JSON in {folder}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The merged model behind ``transformers serve`` on loopback (notebook 05, section 10); the vLLM commands for a
    GPU."""
    from . import pipeline, serve
    from .merge import rule_adapter_dir

    cfg = _start(args)
    if not args.print_only:
        pipeline.ensure(cfg, "merged")  # current, or merged again (and trained first) when stale
    port = args.port or serve.free_port(args.host)
    merged = cfg.artifact_dir("merged").resolve()
    print(
        "transformers serve (this machine, CPU or GPU):\n  "
        + serve.shell(serve.serve_command(cfg, args.host, port, merged))
    )
    adapters = {f"fsr7-{v}": rule_adapter_dir(cfg, v) for v in ("v1", "v2")}
    print(f"vLLM (GPU), the merged model:\n  {serve.vllm_note(cfg)}\n  " + serve.shell(serve.vllm_command(cfg)))
    print(
        "vLLM (GPU), notebook 04's rule adapters on one base (a request picks one with model=fsr7-v1 or fsr7-v2):\n  "
        + serve.vllm_note(cfg, adapters)
        + "\n  "
        + serve.shell(serve.vllm_command(cfg, adapters))
    )
    if args.print_only:
        return 0
    server = serve.start_server(cfg, args.host, port, timeout_s=args.timeout)
    print(
        f"serving {server.model} at {server.base_url} (ready in {server.started_s:.0f} s; log {server.log_path}); "
        f"Ctrl-C stops it.\nLlamaIndex: serve.served_llm({server.base_url!r}, {server.model!r}, cfg)",
        flush=True,
    )
    try:
        return server.process.wait() or 0
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def cmd_status(args: argparse.Namespace) -> int:
    from . import pipeline

    cfg = _start(args)
    for step, state in pipeline.status(cfg).items():
        print(f"{step:8s} {state}")
    return 0


def cmd_run_all(args: argparse.Namespace) -> int:
    """data -> train -> merge -> index -> eval: each step reused when current (``pipeline.ensure``), else built."""
    from . import pipeline
    from .artifacts import STEPS

    cfg = _start(args)
    for step in STEPS:
        print(f"== {step}", flush=True)
        pipeline.ensure(cfg, step, rebuild=args.force)
    print((cfg.artifact_dir("eval") / "report.md").read_text())
    return 0


def cmd_notebooks(args: argparse.Namespace) -> int:
    from .nbrun import run_all

    preset = args.preset or "cpu-smoke"
    runs = run_all(preset, args.only or None)
    total = sum(r.seconds for r in runs)
    print(f"{len(runs)} notebooks, {total:.0f} s in all; executed copies in outputs/{preset}/notebooks/")
    return 0 if runs and all(r.ok for r in runs) else 1


def cmd_prose(args: argparse.Namespace) -> int:
    from .prose import regenerate

    changed = regenerate(check=args.check)
    for path in changed:
        print(f"{'stale' if args.check else 'regenerated'}: {path.name}")
    if args.check and changed:
        print("regenerate them with: ragcourse prose", file=sys.stderr)
    return 1 if args.check and changed else 0


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
    print(
        f"{len(changed)} learner cop{'y' if len(changed) == 1 else 'ies'} updated in {args.dst}"
        + "".join(f"\n  {p.name}" for p in changed)
    )
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


def _arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One ``add_argument`` call, written where its command is listed."""
    return flags, kwargs


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, the function that runs it, its help line, whether it reads the course config
    (``--preset``, ``--config``, ``--set``) and its own arguments."""

    name: str
    func: Callable[[argparse.Namespace], int]
    help: str
    args: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = ()
    config: bool = True


def commands() -> tuple[Command, ...]:
    """Every subcommand, in the order ``ragcourse --help`` lists them."""
    from .export import DEFAULT_QUANT, QUANTS

    src = _arg("--src", default="notebooks", help="course notebooks (default: notebooks)")
    hub_args = (
        _arg("--repo", required=True, help="Hub repository id, e.g. you/ragcourse-artifacts"),
        _arg("steps", nargs="*", help="dataset, adapter, merged, index (default: all there are)"),
    )
    hub = "a Hugging Face Hub repository (token: $HF_TOKEN or Colab secrets)"
    return (
        Command("config", cmd_config, "print the resolved config"),
        Command(
            "prepare-models", cmd_prepare_models, "convert/check the preset's models (embedded ones are converted once)"
        ),
        Command(
            "data",
            cmd_data,
            "build the RAFT dataset (notebook 01) into outputs/<preset>/dataset",
            (
                _arg(
                    "--synthetic",
                    action="store_true",
                    help="also ask the teacher model (data.teacher) for synthetic pairs",
                ),
            ),
        ),
        Command(
            "train",
            cmd_train,
            "train the LoRA/QLoRA adapter (notebook 03); works under `accelerate launch`",
            (
                _arg(
                    "--resume",
                    action="store_true",
                    help="continue from the last complete checkpoint (refused when it was made from other inputs)",
                ),
            ),
        ),
        Command(
            "merge", cmd_merge, "merge the adapter into a fresh 16-bit base, in place, check and save it (notebook 04)"
        ),
        Command(
            "export",
            cmd_export,
            "the merged model as GGUF for llama.cpp/Ollama, with a Modelfile (notebook 04); "
            "needs pip install 'ragcourse[gguf]'",
            (
                _arg("--format", choices=["gguf"], default="gguf", help="the file format (default: gguf)"),
                _arg(
                    "--quant",
                    choices=list(QUANTS),
                    default=DEFAULT_QUANT,
                    help=f"quantized type written beside the f16 file (default: {DEFAULT_QUANT})",
                ),
                _arg("--rebuild", action="store_true", help="export again even when the GGUF folder is current"),
            ),
        ),
        Command(
            "index",
            cmd_index,
            "build (or reuse) the persisted retrieval index (notebook 05)",
            (_arg("--rebuild", action="store_true"),),
        ),
        Command(
            "eval",
            cmd_eval,
            "four-way evaluation and report under outputs/<preset>/eval (notebook 06)",
            (
                _arg(
                    "--judge-samples",
                    type=int,
                    default=None,
                    help="LLM-judge samples (default: evaluation.judge_samples)",
                ),
            ),
        ),
        Command(
            "serve",
            cmd_serve,
            "serve the merged model with transformers serve on loopback (notebook 05); "
            "prints the vLLM commands for a GPU",
            (
                _arg("--host", default="127.0.0.1", help="listen address (default: loopback only)"),
                _arg("--port", type=int, default=0, help="port (default: a free one)"),
                _arg("--timeout", type=float, default=300.0, help="seconds to wait for the server to answer"),
                _arg("--print", dest="print_only", action="store_true", help="print the commands, start nothing"),
            ),
        ),
        Command("status", cmd_status, "each artifact: current, or why it would be rebuilt (builds nothing)"),
        Command(
            "run-all",
            cmd_run_all,
            "the whole pipeline for your config: data, train, merge, index, eval",
            (_arg("--force", action="store_true", help="rebuild every step, even the current ones"),),
        ),
        Command(
            "notebooks",
            cmd_notebooks,
            "execute the course notebooks in order, in fresh kernels",
            (_arg("--preset", default=None), _arg("--only", nargs="*", help="notebook names to run (default: all)")),
            config=False,
        ),
        Command(
            "prose",
            cmd_prose,
            "regenerate the numbers in the notebooks' prose (Prerequisites tables) from code and benchmarks",
            (_arg("--check", action="store_true", help="write nothing; exit 1 and list the notebooks that are stale"),),
            config=False,
        ),
        Command(
            "learner-copies",
            cmd_learner_copies,
            "write the notebooks with solution cells blanked (workshop kit)",
            (
                src,
                _arg(
                    "--dst",
                    default="notebooks/learner",
                    help="where the learner copies go (default: notebooks/learner)",
                ),
                _arg("--check", action="store_true", help="write nothing; exit 1 and list the copies that are stale"),
            ),
            config=False,
        ),
        Command(
            "setup-cells",
            cmd_setup_cells,
            "write the generated Colab setup cell into every notebook",
            (src, _arg("--check", action="store_true", help="write nothing; exit 1 and list the notebooks that drift")),
            config=False,
        ),
        Command("push", cmd_push, f"upload outputs/<preset>/<step> to {hub}", hub_args),
        Command("pull", cmd_pull, f"download <preset>/<step> from {hub}", hub_args),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragcourse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands():
        p = sub.add_parser(command.name, help=command.help)
        if command.config:
            _config_args(p)
        for flags, kwargs in command.args:
            p.add_argument(*flags, **kwargs)
        p.add_argument("-v", "--verbose", action="store_true", help="on an error, also show the full traceback")
        p.set_defaults(func=command.func)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user can fix from the message alone: printed as one line, not a traceback (``errors.CourseError``
    and its kinds: config, data, hardware, model, vector store, server, resume; a missing or unreadable file)."""
    from .errors import CourseError

    return (CourseError, FileNotFoundError, PermissionError)


def one_line(exc: BaseException) -> str:
    """An error as one line: its message with line breaks folded (the OS's errors keep their file name)."""
    return " ".join(str(exc).split()) or exc.__class__.__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as exc:
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
