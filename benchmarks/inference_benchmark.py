"""Inference speed of a registry model on one CPU thread at batch 1, for a 4.5 s utterance.

Prints the network's forward time (the model's cost) and the end-to-end `predict()` time
(resampling + MFCC + network), median and p95 over repeated runs, plus the parameter count.

    python benchmarks/inference_benchmark.py [--model plb-ravdess8] [--runs 200]
"""

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch
from emostream.model.features import utterance_windows
from emostream.model.registry import load_model
from emostream.schemas.audio import PIPELINE_SAMPLE_RATE_HZ

UTTERANCE_S = 4.5
INPUT_RATE_HZ = PIPELINE_SAMPLE_RATE_HZ  # what the streaming pipeline hands the model


def timings_ms(run: "callable", runs: int) -> dict[str, float]:
    for _ in range(10):
        run()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        samples.append(1000 * (time.perf_counter() - started))
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 3), "p95_ms": round(samples[int(0.95 * len(samples)) - 1], 3),
            "min_ms": round(samples[0], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="plb-ravdess8")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(UTTERANCE_S * INPUT_RATE_HZ))).astype(np.float32)
    windows = torch.from_numpy(utterance_windows(audio, INPUT_RATE_HZ, model.card.features)).unsqueeze(1)
    windows = windows.contiguous(memory_format=torch.channels_last)  # as PLBEmotionModel serves it
    network = model.network  # type: ignore[attr-defined]

    def forward() -> None:
        with torch.inference_mode():
            network(windows)

    figures = {
        "model": f"{model.name} v{model.version}",
        "parameters": model.card.parameter_count,
        "parameters_with_bn_statistics": model.card.parameter_count_with_bn_statistics,
        "utterance_s": UTTERANCE_S,
        "torch_threads": torch.get_num_threads(),
        "network_forward": timings_ms(forward, args.runs),
        "features_plus_network": timings_ms(lambda: model.predict([audio], INPUT_RATE_HZ), max(20, args.runs // 4)),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "default"),
    }
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
