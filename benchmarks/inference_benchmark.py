"""Inference cost of a checkpoint per 4.5 s utterance on one CPU thread.

PLB checkpoints: fast vs reference path. ASR-multitask and CNN-BLSTM-SA checkpoints (architecture
`asr-multitask` / `cnn-blstm-sa`, one eager path): log-mel features, the network (with greedy CTC
decoding where the model transcribes) and `predict()` at batch 1 / 4 / 16 and 8 kHz, and the
network's work per utterance.

For the served fast path (torch MFCC + ONNX Runtime network) and the reference path (librosa MFCC +
the eager network), prints: network forward, features (resampling + onset normalisation + MFCC),
features + network (`predict()`), per utterance at batch 1 / 4 / 16, the same at 8 kHz input, and
start-up (checkpoint load, ONNX export, session, warm-up). Every figure has the wall-clock median and
p95 and the calling thread's CPU-time median: on a loaded machine wall time includes waiting for a
core, CPU time is what an utterance costs. Threads and the load average (before / after) are printed.

The network's floating-point work per window (torch's FLOP counter) and this machine's one-thread
matrix-multiply rate at the time of the run are printed too: the speed of this shared machine
varies from day to day, and the two together say how close the network's time is to the CPU's.

    nice -n 15 python benchmarks/inference_benchmark.py [--model plb-ravdess8 | CHECKPOINT_FOLDER] [--runs 100]
"""

import os

# One thread everywhere, set before numpy loads OpenBLAS: with two BLAS threads on a busy 2-core box
# librosa's MFCC took ~80 ms instead of ~2.5 ms.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np
import onnxruntime
import torch
from emostream.model.asr_model import AsrMultitaskEmotionModel
from emostream.model.asr_training import predict_utterances
from emostream.model.base import EmotionModel
from emostream.model.checkpoint import read_card
from emostream.model.features import utterance_windows
from emostream.model.logmel import logmel_frames
from emostream.model.plb_model import PLBEmotionModel
from emostream.model.registry import resolve
from emostream.schemas.audio import PIPELINE_SAMPLE_RATE_HZ
from emostream.schemas.model_card import ModelCard
from emostream.schemas.settings import DEFAULT_MODEL

UTTERANCE_S = 4.5
INPUT_RATE_HZ = PIPELINE_SAMPLE_RATE_HZ  # what the streaming pipeline hands the model
TELEPHONE_RATE_HZ = 8_000
WARM_UP_RUNS = 10


def timings_ms(run: Callable[[], object], runs: int, per: int = 1) -> dict[str, float]:
    """Wall median / p95 and CPU-time median of `run`, divided by `per` (utterances per call)."""
    for _ in range(WARM_UP_RUNS):
        run()
    wall, cpu = [], []
    for _ in range(runs):
        wall_started, cpu_started = time.perf_counter(), time.thread_time()
        run()
        cpu.append(1000 * (time.thread_time() - cpu_started) / per)
        wall.append(1000 * (time.perf_counter() - wall_started) / per)
    wall.sort()
    return {"wall_median_ms": round(statistics.median(wall), 3),
            "wall_p95_ms": round(wall[max(0, int(0.95 * len(wall)) - 1)], 3),
            "cpu_median_ms": round(statistics.median(cpu), 3)}


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def network_mflop_per_window(model: PLBEmotionModel) -> float:
    """Floating-point operations (multiply and add counted apart) of one window through the network."""
    from torch.utils.flop_counter import FlopCounterMode

    config = model.network.config
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.network.eval()(torch.zeros(1, 1, config.input_frames, config.input_coefficients))
    return round(counter.get_total_flops() / 1e6, 1)


def matmul_gflops_one_thread(size: int = 256, runs: int = 200) -> float:
    """GFLOP/s of float32 (size x size) @ (size x size) on one thread: the CPU's speed today."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(20):
        a @ b
    started = time.thread_time()
    for _ in range(runs):
        a @ b
    return round(2 * size**3 * runs / (time.thread_time() - started) / 1e9, 1)


def test_audio() -> tuple[np.ndarray, np.ndarray]:
    """4.5 s of noise at the pipeline's rate and at 8 kHz (the cost does not depend on the content)."""
    rng = np.random.default_rng(0)
    return ((0.1 * rng.standard_normal(int(UTTERANCE_S * INPUT_RATE_HZ))).astype(np.float32),
            (0.1 * rng.standard_normal(int(UTTERANCE_S * TELEPHONE_RATE_HZ))).astype(np.float32))


def first_predict_s(model: EmotionModel, audio: np.ndarray) -> float:
    """Seconds of the model's first `predict()` (lazy imports, warm-up), before anything else runs."""
    started = time.perf_counter()
    model.predict([audio], INPUT_RATE_HZ)
    return round(time.perf_counter() - started, 3)


def predict_figures(model: EmotionModel, audio: np.ndarray, telephone: np.ndarray, runs: int,
                    batches: list[int]) -> dict[str, object]:
    """`predict()` per utterance at each batch size, and at 8 kHz input."""
    figures: dict[str, object] = {}
    for batch in batches:
        figures[f"features_plus_network_batch_{batch}_per_utterance"] = timings_ms(
            partial(model.predict, [audio] * batch, INPUT_RATE_HZ), max(10, runs // batch), per=batch)
    figures["features_plus_network_8khz_batch_1"] = timings_ms(
        lambda: model.predict([telephone], TELEPHONE_RATE_HZ), runs)
    return figures


def network_gflops(mflop: float, figures: dict[str, Any]) -> float:
    return round(mflop / figures["network_forward"]["cpu_median_ms"], 1)


def path_figures(model: PLBEmotionModel, runs: int, batches: list[int]) -> dict[str, object]:
    audio, telephone = test_audio()
    settings = model.card.features
    features = model.window_features  # None on the reference path: librosa
    first_call_s = first_predict_s(model, audio)
    windows = utterance_windows(audio, INPUT_RATE_HZ, settings, features)
    return {
        "start_up_s": round(model.load_s, 3),
        "first_predict_s": first_call_s,
        "network_forward": timings_ms(lambda: model.logits(windows), runs),
        "features": timings_ms(lambda: utterance_windows(audio, INPUT_RATE_HZ, settings, features), runs),
        **predict_figures(model, audio, telephone, runs, batches),
    }


def asr_figures(model: AsrMultitaskEmotionModel, runs: int, batches: list[int]) -> dict[str, object]:
    """The ASR model's one (eager) path; "network" includes greedy CTC decoding where it transcribes."""
    from torch.utils.flop_counter import FlopCounterMode

    audio, telephone = test_audio()
    settings = model.card.features
    first_call_s = first_predict_s(model, audio)
    features = logmel_frames(audio, INPUT_RATE_HZ, settings)
    cpu = torch.device("cpu")
    with FlopCounterMode(display=False) as counter:
        predict_utterances(model.network, [features], cpu)
    figures: dict[str, Any] = {
        "start_up_s": round(model.load_s, 3),
        "first_predict_s": first_call_s,
        "transcribes": model.transcribes,
        "log_mel_frames": int(features.shape[0]),
        "network_mflop_per_utterance": round(counter.get_total_flops() / 1e6, 1),
        "network_forward": timings_ms(lambda: predict_utterances(model.network, [features], cpu), runs),
        "features": timings_ms(lambda: logmel_frames(audio, INPUT_RATE_HZ, settings), runs),
        **predict_figures(model, audio, telephone, runs, batches),
    }
    figures["network_gflops"] = network_gflops(figures["network_mflop_per_utterance"], figures)
    return figures


def run_figures(card: ModelCard, started_at: str, load_before: str, threads: dict[str, object],
                measured: Callable[[], dict[str, object]]) -> dict[str, object]:
    """What every run prints around its model's figures: the model, the machine and its load, and
    the one-thread matrix-multiply rate before and after."""
    return {
        "model": f"{card.name} v{card.version} ({card.architecture}, {card.weights_sha256[:12]})",
        "parameters": card.parameter_count,
        "utterance_s": UTTERANCE_S,
        "input_rate_hz": INPUT_RATE_HZ,
        "started": started_at,
        "load_average_1_5_15_min_before": load_before,
        "threads": {"torch": torch.get_num_threads(), **threads, "openblas": os.environ["OPENBLAS_NUM_THREADS"]},
        "matmul_gflops_one_thread_before": matmul_gflops_one_thread(),
        **measured(),
        "load_average_1_5_15_min_after": load_average(),
        "matmul_gflops_one_thread_after": matmul_gflops_one_thread(),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="registry name or checkpoint folder (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--batches", default="1,4,16", help="utterances per predict() call")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(1)
    started_at, load_before = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), load_average()
    folder = resolve(args.model)
    if read_card(folder).architecture != "plb":
        asr = AsrMultitaskEmotionModel(folder)
        print(json.dumps(run_figures(asr.card, started_at, load_before, {},
                                     lambda: {"eager": asr_figures(asr, args.runs, batches)}), indent=1))
        return
    fast = PLBEmotionModel(folder, fast=True, threads=1)
    reference = PLBEmotionModel(folder, fast=False)

    def plb_figures() -> dict[str, object]:
        mflop = network_mflop_per_window(reference)
        paths: dict[str, Any] = {
            "fast": {"onnx_export_and_session_s": round(fast.onnx_network.build_s, 3) if fast.onnx_network else None,
                     **path_figures(fast, args.runs, batches)},
            "reference": path_figures(reference, args.runs, batches),
        }
        for figures in paths.values():
            figures["network_gflops"] = network_gflops(mflop, figures)
        return {"network_mflop_per_window": mflop, **paths}

    print(json.dumps(run_figures(fast.card, started_at, load_before, {"onnxruntime_intra_op": 1}, plb_figures),
                     indent=1))

if __name__ == "__main__":
    main()
