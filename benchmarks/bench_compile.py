"""``torch.compile`` or not: rlfoundry's DPO forward + backward, eager vs compiled backbone.

    PYTHONPATH=src python benchmarks/bench_compile.py [--quick] [--threads 1]

The benchmark model and preference data of ``bench_dpo.py``, in rlfoundry's default layout
(one packed row per pair, micro-batches of 4 pairs, lengths changing from one micro-batch to
the next as in training). Each variant runs in its own subprocess: eager, and the backbone
under ``torch.compile(dynamic=True)`` (dynamic shapes, so new lengths do not recompile; the
chunked lm-head stays eager). Reported: the first micro-batch (compilation included), the
median of the others, and the total, with the ratio compiled / eager.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SCRIPT = str(Path(__file__).resolve())


def worker(spec: dict) -> dict:
    import torch

    from rlfoundry.algorithms.reference import pair_token_logprobs
    from rlfoundry.data.preference import TokenizedPair, collate_preference_packed

    common.worker_setup(spec["threads"])
    tok = common.build_tokenizer()
    model = common.build_model(common.ModelSpec(), tok).train()
    model.config._attn_implementation = "sdpa"
    pairs = []
    for i, row in enumerate(common.preference_rows(spec["pairs"], seed=0)):
        ids = [tok(row[k], add_special_tokens=False)["input_ids"] for k in ("prompt", "chosen", "rejected")]
        pairs.append(TokenizedPair(ids[0], ids[1] + [tok.eos_token_id], ids[2] + [tok.eos_token_id],
                                   {}, "bench", i))
    batches = [collate_preference_packed(pairs[k:k + 4], tok.pad_token_id)
               for k in range(0, len(pairs), 4)]
    if spec["variant"] == "compiled":
        model.model = torch.compile(model.model, dynamic=True)
    times = []
    for batch in batches:
        start = time.perf_counter()
        pair_token_logprobs(model, batch).logprobs.sum().backward()
        times.append(time.perf_counter() - start)
    return {"times": times, "widths": [int(b["input_ids"].shape[1]) for b in batches]}


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    args = p.parse_args()
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        Path(args.out).write_text(json.dumps(worker({**spec, "variant": args.worker})))
        return
    workdir = common.workdir_for(args)
    spec = {"threads": args.threads, "pairs": 16 if args.quick else 48}
    res = common.interleaved(SCRIPT, ["eager", "compiled"], spec, workdir, args.repeats,
                             label="compile")
    rows = []
    figures = {"first micro-batch s (compilation included)": lambda t: t[0],
               "median of the others s": lambda t: common.median(t[1:]),
               "total s": sum}
    for name, fn in figures.items():
        eager = common.median([fn(r.data["times"]) for r in res["eager"]])
        compiled = common.median([fn(r.data["times"]) for r in res["compiled"]])
        rows.append([name, eager, compiled, f"{compiled / eager:.2f}x"])
    widths = res["eager"][0].data["widths"]
    common.print_table(f"DPO forward + backward, {len(widths)} micro-batches of 4 packed pairs "
                       f"(widths {min(widths)}-{max(widths)})",
                       ["figure", "eager", "compiled", "compiled / eager"], rows)
    print("machine:", common.machine_info(args.threads))
    if args.json:
        args.json.write_text(json.dumps({k: [r.data for r in v] for k, v in res.items()}, indent=1))


if __name__ == "__main__":
    main()
