"""benchmarks/plb_fit_capacity.py: BatchNorm statistics re-estimated over clips reach every BatchNorm."""

import numpy as np
import torch
from emostream.model.plb import PLBConfig, PLBNet

from tests._benchmark_helpers import load_benchmark


def test_re_estimating_batchnorm_statistics_reaches_the_per_frame_norms_and_leaves_eval_mode() -> None:
    bench = load_benchmark("plb_fit_capacity")
    torch.manual_seed(0)
    model = PLBNet(PLBConfig(num_classes=3)).eval()
    inputs = np.random.default_rng(0).standard_normal((64, 196, 39)).astype(np.float32)
    label_ids = np.zeros(64, dtype=np.int64)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 5  # three per-frame (TimeBatchNorm), two in the spatial attentions
    accuracy = bench.with_batch_statistics(model, inputs, label_ids, update=True)
    assert 0.0 <= accuracy <= 1.0 and not model.training
    for norm in norms:  # reset to 0 / 1, then the average over the two batches of 32 (the shared CBAM's
        assert norm.num_batches_tracked.item() in (2, 6)  # spatial norm runs three times a forward)
        assert not torch.allclose(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
