"""Training speed of the PLB engine: seconds per epoch of 1,200 clips, eager against compiled.

Runs `model/training.py`'s own loop (the one `emostream train` / `crossval` use) for two epochs per
mode and reports the second (the first includes torch.compile's start-up, reported apart). Feature
content does not change the cost, so the clips are random unless --features gives a table.

    python benchmarks/training_benchmark.py [--threads 2] [--clips 1200] [--recipe thesis|production]
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from emostream.model.features import input_shift_per_db
from emostream.model.plb import PLBConfig
from emostream.model.recipes import RECIPES
from emostream.model.training import train_plb
from emostream.schemas.model_card import FeatureSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--clips", type=int, default=1200)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="thesis")
    parser.add_argument("--modes", default="eager,compiled")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = np.random.default_rng(0)
    features = (generator.standard_normal((args.clips, 196, 39)) * 20).astype(np.float32)
    labels = generator.integers(0, 8, args.clips)
    results = {}
    for mode in args.modes.split(","):
        recipe = RECIPES[args.recipe](2, compile=mode == "compiled")
        started = time.perf_counter()
        _, history = train_plb(features, labels, PLBConfig(num_classes=8), recipe, torch.device("cpu"),
                               progress=False, shift_per_db=input_shift_per_db(FeatureSettings()))
        results[mode] = {"first_epoch_s": round(history[0].seconds, 2), "epoch_s": round(history[1].seconds, 2),
                         "total_s": round(time.perf_counter() - started, 1)}
    load = os.getloadavg()
    print(json.dumps({"clips_per_epoch": args.clips, "batch_size": 32, "recipe": args.recipe,
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "load_average_1m_at_end": round(load[0], 2), **results}, indent=1))


if __name__ == "__main__":
    main()
