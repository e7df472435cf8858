"""``pact eval``: lmms-eval tasks on a model with a pact config attached.

Every argument is checked (lmms-eval present, config, numbers, paths, device, task names)
before the model is loaded; then lmms-eval's ``simple_evaluate`` runs the tasks through
:class:`pact.eval.lmms.PactLMM` and a table gives each task's metrics next to the visual
tokens kept, the reduction ratio and the mean prefill / generation seconds per request.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path
from typing import Any

from pact.cli.options import (
    add_config_options,
    check_at_least_one,
    config_from_args,
    print_table,
    split,
    write_json,
)
from pact.config import PactConfig
from pact.eval import INSTALL_HINT, lmms_eval_available
from pact.hooks.families import families_with

DESCRIPTION = (
    "Run lmms-eval tasks on a VLM with a pact config attached and print each task's "
    "metrics next to the visual tokens kept, the reduction ratio and the mean prefill and "
    "generation seconds per request (a request's seconds are those of its batch). Needs "
    'lmms-eval: pip install "pact-vlm[eval]".'
)


def add_eval(commands) -> None:
    """Add ``pact eval`` to the top-level ``commands``."""
    parser = commands.add_parser(
        "eval",
        help="lmms-eval tasks with a pact config: metrics, reduction ratio, latency",
        description=DESCRIPTION,
    )
    _add_what_options(parser)
    _add_how_options(parser)
    _add_scale_options(parser)
    parser.set_defaults(run=run_eval)


def _add_what_options(parser: argparse.ArgumentParser) -> None:
    """What is evaluated: model, tasks, config, documents."""
    parser.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="checkpoint (local directory or hub id owner/name) or built-in "
        f"tiny random-weight model tiny:<family> ({', '.join(families_with(tiny=True))})",
    )
    parser.add_argument(
        "--tasks",
        required=True,
        metavar="A,B",
        help="comma list of lmms-eval task or group names (wildcards as in lmms-eval, e.g. 'mme*')",
    )
    add_config_options(parser, help_extra="; 'none' evaluates the unreduced model")
    parser.add_argument(
        "--limit",
        type=float,
        metavar="N",
        help="documents per task: a count, or a fraction below 1 (default: all)",
    )
    parser.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="folder of extra lmms-eval task YAML files; repeatable (default: none)",
    )


def _add_how_options(parser: argparse.ArgumentParser) -> None:
    """How it runs: batching, answer length, device, dtype, attention, seed, output."""
    parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default=1,
        metavar="N|auto",
        help="requests run together, left padded; auto: start at 32 and halve whenever a "
        "batch runs out of GPU memory (default: 1)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        metavar="N",
        help="upper bound on each answer's tokens (default: the task's)",
    )
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="write metrics, pact figures and the full config as JSON (default: printed only)",
    )
    parser.add_argument(
        "--device",
        help="cpu, cuda or cuda:N (default: cuda when available); under torchrun or "
        "accelerate launch each process takes cuda:LOCAL_RANK",
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="auto: bfloat16 on cuda, float32 on cpu",
    )
    parser.add_argument(
        "--attn",
        choices=("sdpa", "eager", "flash_attention_2"),
        default="sdpa",
        help="attention implementation to load the model with (default: sdpa)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of lmms-eval's sampling and of tiny weights (default: 0)",
    )


def _add_scale_options(parser: argparse.ArgumentParser) -> None:
    """Placement over GPUs, Qwen-VL's pixel budget and lmms-eval's model form."""
    parser.add_argument(
        "--device-map",
        choices=("auto", "balanced", "sequential"),
        help="spread a checkpoint's layers over the GPUs (transformers' device_map); with "
        "several processes, over each one's share of them (default: one device)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help="Qwen-VL: most pixels per image (default: lmms-eval's, e.g. 1605632 for Qwen2.5-VL)",
    )
    parser.add_argument(
        "--min-pixels",
        type=int,
        metavar="N",
        help="Qwen-VL: fewest pixels per image (default: lmms-eval's, e.g. 200704 for Qwen2.5-VL)",
    )
    parser.add_argument(
        "--interface",
        choices=("auto", "chat", "simple"),
        default="auto",
        help="lmms-eval model form: chat (prompts from the task's messages) or simple "
        "(needed by log-likelihood tasks); auto: chat unless a task scores log-likelihoods",
    )


def run_eval(args: argparse.Namespace) -> int:
    """The ``pact eval`` command: check, evaluate, print the table, write the JSON."""
    config = check_args(args)
    manager, tasks = task_manager(args.tasks, args.include_path)
    from pact.eval.parallel import Ranks

    main_rank = Ranks.from_env().main
    _quiet_lmms_eval_logs(main_rank)
    if not main_rank:  # lmms-eval's own progress bars too: tqdm reads TQDM_DISABLE
        os.environ["TQDM_DISABLE"] = "1"
    loglikelihoods = scores_loglikelihood(manager, tasks)
    if args.interface == "auto":
        args.interface = "simple" if loglikelihoods else "chat"
    elif args.interface == "chat" and loglikelihoods:
        raise ValueError(
            "--interface chat: a task scores log-likelihoods, which lmms-eval asks of simple "
            "models only; use --interface simple (or auto)"
        )
    from lmms_eval.evaluator import simple_evaluate

    model_class = _model_class(args.interface)
    # The model joins the launcher's process group (when there is one) before lmms-eval
    # needs it, on this rank's own device.
    model = model_class(
        args.model,
        config,
        device=args.device,
        dtype=args.dtype,
        attn=args.attn,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        device_map=args.device_map,
        max_pixels=args.max_pixels,
        min_pixels=args.min_pixels,
    )
    results = simple_evaluate(
        model=model,
        tasks=tasks,
        limit=args.limit,
        task_manager=manager,
        bootstrap_iters=0,
        log_samples=False,
        random_seed=args.seed,
        numpy_random_seed=args.seed,
        torch_random_seed=args.seed,
        fewshot_random_seed=args.seed,
    )
    if not main_rank:  # rank 0 prints and writes; the figures were summed over the ranks
        return 0
    report = build_report(args, config, results, model.summary())
    report["interface"] = args.interface
    report["processes"] = model.ranks.world_size
    report["pixels"] = model.pixels
    print_results(report)
    if args.output:
        write_json(args.output, report)
    return 0


def check_args(args: argparse.Namespace) -> PactConfig:
    """Every check that needs no model; returns the validated config."""
    if not lmms_eval_available():
        raise ValueError(INSTALL_HINT)
    config = config_from_args(args)
    args.tasks = split(args.tasks, "--tasks", what="task name")
    check_at_least_one(args, ("max_new_tokens", "max_pixels", "min_pixels"))
    if args.batch_size != "auto" and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1 or auto; got {args.batch_size}")
    if args.limit is not None:
        if args.limit <= 0 or (args.limit >= 1 and not args.limit.is_integer()):
            raise ValueError(f"--limit takes a count or a fraction below 1; got {args.limit:g}")
        args.limit = int(args.limit) if args.limit >= 1 else args.limit
    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise ValueError(f"--output: folder of {args.output!r} does not exist")
    for folder in args.include_path:
        if not Path(folder).is_dir():
            raise ValueError(f"--include-path: {folder!r} is not a folder")
    _check_device(args.device)
    return config


def _batch_size(text: str) -> int | str:
    if text.strip() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a count or auto; got {text!r}") from None


def _model_class(interface: str):
    if interface == "chat":
        from pact.eval.chat import PactChatLMM

        return PactChatLMM
    from pact.eval.lmms import PactLMM

    return PactLMM


def scores_loglikelihood(manager, names: list[str]) -> bool:
    """Whether a task among ``names`` (groups followed to their tasks) asks for
    log-likelihoods (``loglikelihood`` or ``multiple_choice``), which lmms-eval sends
    to simple models only."""
    from lmms_eval.utils import load_yaml_config

    pending, seen = list(names), set()
    while pending:
        name = pending.pop()
        entry = manager.task_index.get(name) if isinstance(name, str) else None
        if name in seen or not entry or entry.get("yaml_path", -1) == -1:
            continue
        seen.add(name)
        config = load_yaml_config(entry["yaml_path"], mode="simple")
        if entry["type"] == "task":
            if config.get("output_type") in ("loglikelihood", "multiple_choice"):
                return True
        else:  # a group or tag: its tasks
            listed = config.get("task") or entry.get("task") or []
            pending += [listed] if isinstance(listed, str) else list(listed)
    return False


def _check_device(device: str | None) -> None:
    import torch

    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device takes cpu, cuda or cuda:N; got {device!r}") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"--device takes cpu, cuda or cuda:N; got {device!r}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device; use --device cpu")


def task_manager(names: list[str], include_paths: list[str]):
    """``(TaskManager, task names)``, every name known; an unknown one names ``--tasks``.

    Names found in ``include_paths`` alone skip indexing lmms-eval's ~2000 built-in tasks.
    """
    from lmms_eval.tasks import TaskManager

    if include_paths:
        local = TaskManager("WARNING", include_path=include_paths, include_defaults=False)
        if all(local.match_tasks([name]) for name in names):
            return local, _expand(local, names)
    manager = TaskManager("WARNING", include_path=include_paths or None)
    return manager, _expand(manager, names)


def _expand(manager, names: list[str]) -> list[str]:
    tasks: list[str] = []
    for name in names:
        matched = manager.match_tasks([name])
        if not matched:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise ValueError(
                f"--tasks: unknown task {name!r}{hint}; local task folders go in --include-path"
            )
        tasks += [task for task in matched if task not in tasks]
    return tasks


def _quiet_lmms_eval_logs(main_rank: bool) -> None:
    # lmms-eval logs warnings to stdout, between the table's lines; send them to stderr,
    # and only errors from ranks other than 0 (each would repeat rank 0's warnings).
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING" if main_rank else "ERROR")


def build_report(args, config: PactConfig, results: dict, pact: dict) -> dict[str, Any]:
    """What is printed and written: the run's settings, lmms-eval's metrics, pact's figures."""
    return {
        "model": args.model,
        "config": args.config,
        "overrides": list(args.set),
        "pact_config": config.model_dump(mode="json"),
        "tasks": args.tasks,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "results": results.get("results", {}),
        "n_samples": results.get("n-samples", {}),
        "pact": pact,
    }


def metric_rows(report: dict) -> list[tuple[str, str, str]]:
    """``(task, metric, value)`` for every metric lmms-eval reported (stderrs left out)."""
    rows = []
    for task, metrics in report["results"].items():
        for name, value in metrics.items():
            if name == "alias" or "_stderr" in name:
                continue
            shown = f"{value:.4f}" if isinstance(value, (int, float)) else str(value)
            rows.append((task, name, shown))
    return rows


def print_results(report: dict) -> None:
    """Task metrics with the pact figures of their task, then the run overall."""
    columns = ("task", "metric", "value", "visual kept/seen", "reduction", "prefill FLOPs",
               "prefill s", "generation s")  # fmt: skip
    pact = report["pact"]
    rows = [
        (task, metric, value, *_pact_cells(pact["tasks"].get(task)))
        for task, metric, value in metric_rows(report)
    ]
    rows.append(("all", "-", "-", *_pact_cells(pact["overall"])))
    config = " ".join([report["config"], *report["overrides"]])
    before = [f"model: {report['model']}  config: {config}"]
    after = ["reduction = 1 - kept/seen; prefill FLOPs: the decoder's, reduced / unreduced "
             "(analytic, pact.flops); seconds are means per request (its batch's time)"]
    print_table(columns, rows, before, after)


def _pact_cells(figures: dict | None) -> tuple[str, ...]:
    if not figures:  # a group's row: its figures are its tasks'
        return ("-",) * 5
    flops = figures.get("prefill_flops_ratio")
    return (
        f"{figures['visual_tokens_kept']}/{figures['visual_tokens_seen']}",
        f"{figures['reduction_ratio']:.4f}",
        "-" if flops is None else f"{flops:.3f}",
        f"{figures['prefill_s_per_request']:.4f}",
        f"{figures['generation_s_per_request']:.4f}",
    )
