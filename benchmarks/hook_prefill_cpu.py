"""Prefill speedup of `pact` vs the ideal, on a Qwen2-0.5B-shaped LLaVA-OneVision (CPU).

    python benchmarks/hook_prefill_cpu.py [--image-tokens 2000] [--repeats 5] [--json out.json]

Random weights (no download): the timing depends on shapes, not on weights. The reduction
is preset `pact` with keep ratio 0.3 and no retrieval. Prints unreduced vs reduced prefill
time (median), the ideal speedup implied by the tokens each layer processes, the achieved
one, and KV-cache bytes (checked against the kept-token counts).
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
import transformers

from pact.bench.prefill import measure_prefill
from pact.models.tiny import QWEN2_0_5B_SHAPE, build_shaped

OVERRIDES = ["keep_ratio=0.3", "retrieval=false", "alpha=null"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-tokens", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    tiny = build_shaped(QWEN2_0_5B_SHAPE, "llava_onevision", image_tokens=args.image_tokens)
    batch = tiny.inputs([["text:12", "image", "text:24"]])
    config = {"preset": "pact", "overrides": OVERRIDES}
    from pact.config import PactConfig

    report = measure_prefill(tiny.model, batch, PactConfig.load("pact", OVERRIDES), args.repeats)
    result = report.as_dict() | {
        "config": config,
        "device": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
