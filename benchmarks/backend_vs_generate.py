"""Our PyTorch backend against a plain ``model.generate`` loop on the same workload, in one run.

Goal (issue 3): the backend's output tokens/s within 3% of the plain loop's. The backend
adds a per-step timing hook, device synchronisation at batch edges and per-request
accounting; this shows what they cost. Rounds alternate between the two so drift (thermal,
other load) hits both alike.

    .venv/bin/python benchmarks/backend_vs_generate.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llem_service.backends.pytorch import PytorchBackend

from tests.conftest import make_config
from tests.integration.conftest import build_gpt2

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import torch

    root = Path(tempfile.mkdtemp())
    build_gpt2(root / "bench-gpt2", n_embd=256, n_layer=4)
    config = make_config(
        model="bench-gpt2",
        n_prompts=32,
        batch_size=8,
        max_output_tokens=32,
        prompts={"source": "synthetic", "input_len": 64, "seed": 0},
        warmup={"mode": "fixed", "batches": 2},
    )
    backend = PytorchBackend(model_roots=(str(root),))
    backend.load(config)
    backend.warmup(config)
    model = backend._state["model"]
    batches = backend._state["batches"]
    generation_config = backend._generation_config(config)

    def plain() -> float:
        """Output tokens/s of a bare generate loop over the same batches."""
        started = time.perf_counter()
        tokens = 0
        with torch.inference_mode():
            for batch in batches:
                out = model.generate(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    generation_config=generation_config,
                )
                tokens += (out.shape[1] - batch.input_ids.shape[1]) * out.shape[0]
        return tokens / (time.perf_counter() - started)

    ours, theirs = [], []
    for _ in range(args.rounds):
        report = backend.run(config, lambda done, total: None)
        ours.append(report.output_tokens / report.duration_s)
        theirs.append(plain())
    backend.close()

    ratio = statistics.median(ours) / statistics.median(theirs)
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, CPU only",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "workload": "GPT-2 shape, 4 layers, d=256, random weights; 32 prompts x 64 tokens, "
        "batch 8, 32 output tokens (fixed), greedy, fp32",
        "rounds": args.rounds,
        "llem_tokens_per_s": ours,
        "plain_generate_tokens_per_s": theirs,
        "ratio_median": ratio,
        "goal": "ratio >= 0.97",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "backend_vs_generate.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / "backend_vs_generate.md").write_text(
        f"# llem backend vs plain `model.generate`\n\n{record['date']}, {record['machine']}, "
        f"Python {record['python']}, torch {record['torch']}. {record['workload']}. "
        f"{args.rounds} alternating rounds. Made by `benchmarks/backend_vs_generate.py`.\n\n"
        "| | median output tokens/s | min | max |\n|---|---:|---:|---:|\n"
        f"| llem PytorchBackend | {statistics.median(ours):.1f} | {min(ours):.1f} | "
        f"{max(ours):.1f} |\n"
        f"| plain generate loop | {statistics.median(theirs):.1f} | {min(theirs):.1f} | "
        f"{max(theirs):.1f} |\n\n"
        f"Ratio of medians: **{ratio:.3f}** (goal: at least 0.97). No GPU was lent to this "
        "session, so the GPU figures and the memory-bandwidth bound are not measured yet.\n"
    )
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
