"""Issue 5 on a GPU, in one command: flash path, DBDPC speed, end-to-end on a 7B shape.

    python benchmarks/gpu_suite.py --out DIR            # on a CUDA machine
    python benchmarks/gpu_suite.py --out DIR --smoke    # tiny shapes on CPU (CI, ~15 s)

Writes DIR/gpu_suite.json (every figure, the versions and the command) and DIR/gpu_suite.md
(the tables), rewritten after each section so that a run cut off by a time limit keeps what
it measured. A section that fails records its traceback and the others still run.

1. flash: the model is loaded with ``flash_attention_2`` when flash_attn imports, else
   ``sdpa`` (torch's own FlashAttention-2 backend); the output says which. Per decoder layer,
   which attention call pact made (head dim +8: proportional attention in an extra
   dimension; a mask: off the flash kernel), the attention kernels the profiler saw, and a
   re-run with sdpa restricted to its flash backend. Invariants in bf16: merged duplicates
   attend like the copies; each row of a padded batch gives its logits alone.
2. dbdpc: one DBDPC call at each size on bf16 keys (float32 distances): CUDA-event and wall
   medians, per-step times, host synchronisations per call, GPU-busy time and so the share
   of the call the GPU spent waiting for the host; the legacy per-round-sync form alongside.
3. e2e: random-weight LLaVA-OneVision with Qwen2-7B's decoder shape in bf16, one image of
   ~7300 visual tokens: prefill (vs none, interleaved), decode tokens/s, peak memory and KV
   bytes of pact, fastv and tome tuned to remove the same fraction of visual tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers

from pact.bench.gpu import end_to_end as e2e
from pact.bench.gpu.dbdpc_timing import time_dbdpc
from pact.bench.gpu.flash_check import dispatch_report, duplicates_invariant, rows_vs_alone
from pact.bench.gpu.gpu_timing import synchronize
from pact.bench.tuning import config_of, untuned
from pact.models.shaped import make_batch
from pact.models.tiny import QWEN2_7B_SHAPE

SMOKE_SHAPE = dict(layers=8, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=512)
STEPS = ("distances", "density", "centers", "labels")
GOALS = {"fraction_of_ideal": 0.90, "reduction_overhead": 0.02, "dbdpc_share_of_prefill": 0.02}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--out", required=True, help="folder for gpu_suite.json and gpu_suite.md")
    add("--smoke", action="store_true", help="tiny shapes on CPU: exercises every section")
    add("--sections", default="flash,dbdpc,e2e", help="comma-separated subset to run")
    add("--attn", default="auto", help="auto (flash_attention_2 if flash_attn imports, else sdpa)")
    add("--dbdpc-sizes", default="576,2304,5000,8748")
    add("--dbdpc-dim", type=int, default=512)
    add("--dbdpc-kinds", default="random,smooth")
    add("--dbdpc-forms", default="legacy,masked:1,masked:4,masked:16")
    add("--dbdpc-repeats", type=int, default=20)
    add("--dbdpc-warmup", type=int, default=3)
    add("--image-tokens", type=int, default=7300)
    add("--batch-sizes", default="1,4")
    add("--methods", default="pact,fastv,tome")
    add("--repeats", type=int, default=5, help="prefill repeats per method (median)")
    add("--decode-tokens", type=int, default=32)
    add("--target-removal", type=float, default=0.70)
    add(
        "--budget-s",
        type=float,
        default=360.0,
        help="seconds from the start after which the "
        "remaining end-to-end runs are skipped (listed as such)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.dbdpc_sizes, args.dbdpc_dim, args.dbdpc_repeats, args.dbdpc_warmup = "64,160", 32, 2, 1
        args.dbdpc_forms = "legacy,masked:1,masked:4"
        args.image_tokens, args.batch_sizes, args.repeats, args.decode_tokens = 120, "1,2", 1, 2
    return args


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def _words(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def pick_attention(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if device != "cuda":
        return "sdpa"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "sdpa"
    return "flash_attention_2"


def meta(args: argparse.Namespace, device: str, attn: str) -> dict[str, Any]:
    try:
        import flash_attn

        flash_version = flash_attn.__version__
    except ImportError:
        flash_version = None
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "command": " ".join(["python", *sys.argv]),
        "args": vars(args),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit or None,
        "device": torch.cuda.get_device_name() if device == "cuda" else _cpu_words(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "flash_attn": flash_version,
        "python": platform.python_version(),
        "attn_implementation": attn,
        "kernel": _kernel_words(attn, device),
    }


def _cpu_words() -> str:
    name = platform.processor() or platform.machine()
    return f"CPU {name}, {torch.get_num_threads()} torch threads"


def _kernel_words(attn: str, device: str) -> str:
    if attn == "flash_attention_2":
        return "flash_attn's FlashAttention-2 kernels (transformers flash_attention_2)"
    if attn == "sdpa" and device == "cuda":
        return "torch scaled_dot_product_attention (its flash backend where no mask is passed)"
    return f"{attn} on {device}"


def guarded(fn, *args, **kwargs) -> Any:
    """``fn(...)``, or the traceback of its failure (one section must not sink the others)."""
    try:
        return fn(*args, **kwargs)
    except Exception:
        return {"error": traceback.format_exc()}


# ------------------------------------------------------------------ sections
def dbdpc_section(args, device: str) -> dict[str, Any]:
    rows = []
    for n in _ints(args.dbdpc_sizes):
        for kind in _words(args.dbdpc_kinds):
            for form in _words(args.dbdpc_forms):
                row = guarded(
                    time_dbdpc, n, args.dbdpc_dim, kind, form, device,
                    args.dbdpc_repeats, args.dbdpc_warmup,
                )  # fmt: skip
                if "error" in row:
                    row |= {"n": n, "kind": kind, "form": form}
                rows.append(row)
                if device == "cuda":
                    torch.cuda.empty_cache()
    return {"keys": "bf16", "distances": "float32", "rows": rows}


def flash_section(attn: str, device: str) -> dict[str, Any]:
    return {
        "implementation": attn,
        "duplicates_invariant_bf16": guarded(duplicates_invariant, attn, device),
        "rows_vs_alone_bf16": guarded(rows_vs_alone, attn, device),
    }


def settings_from(args, device: str, attn: str, deadline: float) -> e2e.Settings:
    smoke = args.smoke
    return e2e.Settings(
        shape=SMOKE_SHAPE if smoke else QWEN2_7B_SHAPE,
        image_tokens=args.image_tokens,
        dtype=torch.float32 if smoke else torch.bfloat16,
        device=device,
        attn=attn,
        batch_sizes=_ints(args.batch_sizes),
        methods=_words(args.methods),
        repeats=args.repeats,
        decode_tokens=args.decode_tokens,
        target_removal=args.target_removal,
        calibration_steps=3 if smoke else 7,
        deadline=deadline,
    )


def model_sections(args, device: str, attn: str, result: dict, save, deadline: float) -> None:
    """Build the shaped model once: tune the methods, check pact's dispatch on it, run e2e."""
    settings = settings_from(args, device, attn, deadline)
    started = time.monotonic()
    tiny = e2e.build_model(settings)
    synchronize(device)
    result["model"] = _model_facts(tiny, settings, time.monotonic() - started)
    tuned = guarded(e2e.tuned_configs, tiny, make_batch(tiny, 1, settings.seed), settings)
    if "error" in tuned:
        guesses = untuned(settings.methods, settings.target_removal)
        result["tuning_error"], tuned = tuned["error"], guesses
    result["tuned"] = tuned
    save()
    if "pact" in tuned and "flash" in _words(args.sections):
        dispatch = result.setdefault("flash", {}).setdefault("dispatch_on_model", [])
        config = config_of("pact", tuned["pact"])
        for batch_size in settings.batch_sizes:
            batch = make_batch(tiny, batch_size, settings.seed)
            dispatch.append(guarded(dispatch_report, tiny, batch, config, attn))
            save()
    if "e2e" in _words(args.sections):

        def record(partial: dict) -> None:
            result["end_to_end"] = partial
            save()

        record(guarded(e2e.end_to_end, tiny, settings, tuned, record))


def _model_facts(tiny, settings: e2e.Settings, seconds: float) -> dict[str, Any]:
    batch = make_batch(tiny, 1)
    visual = int(tiny.visual_mask(batch).sum())
    return {
        "family": "llava_onevision",
        "decoder_shape": settings.shape,
        "dtype": str(settings.dtype),
        "parameters": sum(p.numel() for p in tiny.model.parameters()),
        "visual_tokens": visual,
        "tokens": int(batch["input_ids"].shape[1]),
        "build_seconds": seconds,
    }


# ------------------------------------------------------------------ summary and tables
def summarize(result: dict) -> dict[str, Any]:
    """The issue's goals, each with the figure it is judged on (None: not measured)."""
    rows = (result.get("end_to_end") or {}).get("rows", [])
    none_b1 = next(
        (r for r in rows if r["config"] == "pact" and r["batch"] == 1 and "error" not in r), None
    )
    summary: dict[str, Any] = {"goals": GOALS, "pact": []}
    for row in rows:
        if row["config"] == "pact" and "error" not in row:
            summary["pact"].append(
                {
                    "batch": row["batch"],
                    "removal": row["removal"],
                    "fraction_of_ideal": row["fraction_of_ideal"],
                    "meets_fraction_goal": row["fraction_of_ideal"] >= GOALS["fraction_of_ideal"],
                    "reduction_overhead": row["reduction_overhead"],
                    "meets_overhead_goal": row["reduction_overhead"] <= GOALS["reduction_overhead"],
                }
            )
    dbdpc = [r for r in (result.get("dbdpc") or {}).get("rows", []) if "error" not in r]
    default = [r for r in dbdpc if r["form"] == "masked:4"]
    if default:
        largest = max(r["n"] for r in default)
        worst = max(_call_ms(r) for r in default if r["n"] == largest)
        summary["dbdpc_ms_at_largest_n"] = {"n": largest, "ms": worst}
        if none_b1 is not None:
            share = worst / (none_b1["none_seconds"] * 1000)
            summary["dbdpc_share_of_unreduced_prefill"] = share
            summary["meets_dbdpc_goal"] = share <= GOALS["dbdpc_share_of_prefill"]
    return summary


def _call_ms(row: dict) -> float:
    return row["event_ms"] if row.get("event_ms") is not None else row["wall_ms"]


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1].replace("|", "/")[:200]


def markdown(result: dict) -> str:
    info = result["meta"]
    lines = [
        "# GPU suite (issue 5)",
        "",
        f"`{info['command']}`, {info['date_utc']}, commit {info['git_commit']}",
        f"device: {info['device']}; torch {info['torch']} (CUDA {info['cuda']}), transformers "
        f"{info['transformers']}, flash_attn {info['flash_attn']}; attention: "
        f"{info['attn_implementation']} ({info['kernel']})",
        "",
    ]
    for key in ("model_error", "tuning_error"):
        if key in result:
            lines += [f"{key}: `{_last_line(result[key])}` (traceback in the JSON)", ""]
    lines += _flash_lines(result.get("flash"))
    lines += _dbdpc_lines(result.get("dbdpc"))
    lines += _e2e_lines(result.get("end_to_end"), result.get("tuned"), result.get("model"))
    lines += ["## Goals", "", "```json", json.dumps(result.get("summary"), indent=1), "```", ""]
    return "\n".join(lines)


def _flash_lines(flash: dict | None) -> list[str]:
    if not flash:
        return []
    lines = ["## 1. Flash path", ""]
    for key in ("duplicates_invariant_bf16", "rows_vs_alone_bf16"):
        lines += [f"{key}:", "", "```json", json.dumps(flash.get(key), indent=1), "```", ""]
    lines += [
        "| batch | reduced layers | with +8 head dim | masked calls there | flash-only prefill "
        "| attention kernels |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for item in flash.get("dispatch_on_model", []):
        if "error" in item:
            lines.append(f"| error | {_last_line(item['error'])} | | | | |")
            continue
        kernels = ", ".join(f"{k} x{v}" for k, v in (item["attention_kernels"] or {}).items())
        lines.append(
            f"| {item['batch']} | {item['reduced_layers']} "
            f"| {item['reduced_layers_with_extra_dim']} "
            f"| {item['masked_calls_in_reduced_layers']} | {item['flash_only_prefill']} "
            f"| {kernels or '-'} |"
        )
    return [*lines, ""]


def _dbdpc_lines(dbdpc: dict | None) -> list[str]:
    if not dbdpc or "rows" not in dbdpc:
        return ["## 2. DBDPC", "", f"```\n{(dbdpc or {}).get('error')}\n```", ""] if dbdpc else []
    lines = [
        "## 2. DBDPC (bf16 keys, float32 distances; median ms per call)",
        "",
        "| n | keys | form | centers | CUDA-event ms | wall ms | syncs | GPU busy ms "
        "| host-bound share | peak MiB | distances / density / centers / labels ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in dbdpc["rows"]:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['kind']} | {r['form']} | error | | | | | | | |")
            continue
        steps = " / ".join(_fmt(r["steps_ms"].get(step)) for step in STEPS)
        peak = None if r["peak_bytes"] is None else r["peak_bytes"] / 2**20
        lines.append(
            f"| {r['n']} | {r['kind']} | {r['form']} | {r['centers']} | {_fmt(r['event_ms'])} "
            f"| {_fmt(r['wall_ms'])} | {_fmt(r['syncs_per_call'])} | {_fmt(r['gpu_busy_ms'])} "
            f"| {_fmt(r['host_bound_share'])} | {_fmt(peak, 0)} | {steps} |"
        )
    return [*lines, ""]


def _e2e_lines(section: dict | None, tuned: dict | None, model: dict | None) -> list[str]:
    if section is None and tuned is None and model is None:
        return []
    lines = ["## 3. End to end", "", f"model: `{json.dumps(model)}`", ""]
    lines += [f"tuned: `{json.dumps(tuned)}`", ""]
    if not section or "rows" not in section:
        return [*lines, f"```\n{(section or {}).get('error')}\n```", ""]
    lines += [
        "| batch | config | attention | visual in -> out | removal | prefill ms (paired none) "
        "| speedup | ideal | of ideal | overhead | decode tok/s | peak prefill GiB | KV MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in section["rows"]:
        if "error" in r:
            lines.append(f"| {r['batch']} | {r['config']} | error: {_last_line(r['error'])} |")
            continue
        if r["config"] == "none":
            prefill = _fmt(1000 * r["prefill_seconds"], 1) if "prefill_seconds" in r else "-"
            cells = ["-", "-", prefill, "-", "-", "-", "-"]
        else:
            prefill = f"{1000 * r['reduced_seconds']:.1f} ({1000 * r['none_seconds']:.1f})"
            cells = [
                f"{r['visual_in']} -> {r['visual_out']}", _fmt(r["removal"]), prefill,
                _fmt(r["achieved_speedup"]), _fmt(r["ideal_speedup"]),
                _fmt(r["fraction_of_ideal"]), f"{100 * r['reduction_overhead']:.2f}%",
            ]  # fmt: skip
        peak = None if r["peak_prefill_bytes"] is None else r["peak_prefill_bytes"] / 2**30
        kv = r.get("kv_bytes_reduced", r.get("kv_bytes_none"))
        lines.append(
            f"| {r['batch']} | {r['config']} | {r['attn_implementation']} | {' | '.join(cells)} "
            f"| {_fmt(r['decode_tokens_per_s'], 1)} | {_fmt(peak)} "
            f"| {_fmt(None if kv is None else kv / 2**20, 1)} |"
        )
    if section.get("skipped"):
        lines.append(f"\nskipped (time budget): {section['skipped']}")
    return [*lines, ""]


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    attn = pick_attention(args.attn, device)
    sections = _words(args.sections)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"meta": meta(args, device, attn)}
    started = time.monotonic()

    def save() -> None:
        result["meta"]["seconds"] = time.monotonic() - started
        result["summary"] = summarize(result)
        (out / "gpu_suite.json").write_text(json.dumps(result, indent=1, default=str))
        (out / "gpu_suite.md").write_text(markdown(result))

    if "flash" in sections:
        result["flash"] = guarded(flash_section, attn, device)
        save()
    if "dbdpc" in sections:
        result["dbdpc"] = guarded(dbdpc_section, args, device)
        save()
    if "e2e" in sections or "flash" in sections:
        deadline = started + args.budget_s
        failure = guarded(model_sections, args, device, attn, result, save, deadline)
        if failure is not None:
            result["model_error"] = failure["error"]
    save()
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
