"""A trained PLBNet run by ONNX Runtime: exported once at model load, one intra-op thread by default.

Measured on the 2-core EPYC (benchmarks/inference_benchmark.py): ~2.3 ms CPU per 4.5 s window at
batch 1, against ~8-9 ms for the eager network and ~2.4 ms for torch.compile with freezing, whose
compile took 17-60 s at start-up against ~0.4 s for this export. The graph is FastPLBNet
(model/fast_network.py), written by the TorchScript-based exporter (it needs the `onnx` package).
"""

import io
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch
from emostream.model.fast_network import FastPLBNet
from emostream.model.plb import PLBNet

INPUT_NAME = "mfcc"
OUTPUT_NAME = "logits"
ONNX_OPSET = 17
# Windows per session run. Per window, one thread: 2.32 ms at 1, 2.24 at 2, 2.52 at 4, 2.99 at 8,
# 3.28 at 16 (bigger batches spill the 2 MB L2), so a batch of utterances runs two windows at a time.
CHUNK_WINDOWS = 2


def export_onnx(network: PLBNet) -> bytes:
    """The ONNX model (bytes) of `network`'s inference function; the batch axis is dynamic."""
    fast = FastPLBNet(network).eval()
    config = network.config
    example = torch.zeros(1, 1, config.input_frames, config.input_coefficients)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(fast, (example,), buffer,  # type: ignore[arg-type]  # file objects work
                          dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return buffer.getvalue()


class OnnxNetwork:
    """Logits of (batch, 1, frames, coefficients) float32 inputs. Thread-safe (ORT sessions are)."""

    def __init__(self, network: PLBNet, threads: int = 1) -> None:
        started = time.perf_counter()
        model = export_onnx(network)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings and below are not for the operator
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.build_s = time.perf_counter() - started

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        chunks = [self.session.run([OUTPUT_NAME], {INPUT_NAME: inputs[start : start + CHUNK_WINDOWS]})[0]
                  for start in range(0, len(inputs), CHUNK_WINDOWS)]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
