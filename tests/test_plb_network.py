"""The PLB network against Table 1 of the thesis, and its building blocks."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from emostream.model.plb import (
    PLBConfig,
    PLBNet,
    TimeBatchNorm,
    count_parameters,
    count_parameters_with_bn_statistics,
    squash,
)

TABLE_COUNTS = {4: 95_093, 7: 95_288, 8: 95_353}  # Tables 8-10 (4 / 7 / 8 classes), Keras' convention


@pytest.mark.parametrize("num_classes", sorted(TABLE_COUNTS))
def test_parameter_count_matches_the_thesis(num_classes: int) -> None:
    model = PLBNet(PLBConfig(num_classes=num_classes))
    assert count_parameters_with_bn_statistics(model) == TABLE_COUNTS[num_classes]
    assert abs(count_parameters(model) - TABLE_COUNTS[num_classes]) / TABLE_COUNTS[num_classes] < 0.05
    assert count_parameters(model) < 100_000


def test_each_added_class_costs_exactly_65_parameters() -> None:
    counts = [count_parameters(PLBNet(PLBConfig(num_classes=k))) for k in range(2, 10)]
    assert {b - a for a, b in itertools.pairwise(counts)} == {65}


def test_table_1_module_counts() -> None:
    model = PLBNet(PLBConfig(num_classes=7))

    def keras_count(module: torch.nn.Module) -> int:
        return count_parameters_with_bn_statistics(module)

    assert keras_count(model.forward_block) == keras_count(model.reverse_block) == 1_416
    assert keras_count(model.dilated_block) == 37_300
    assert keras_count(model.cbam) == 4_294
    assert keras_count(model.spatial_attention) == 102
    assert keras_count(model.separable) == 25_600
    assert keras_count(model.routing) == 24_576
    assert keras_count(model.self_attention) == 129  # dot-product scale (1) + LayerNorm (128)
    assert keras_count(model.classifier) == 455


@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape_and_gradients(batch: int) -> None:
    model = PLBNet(PLBConfig(num_classes=8))
    logits = model(torch.randn(batch, 1, 196, 39))
    assert logits.shape == (batch, 8)
    if batch > 1:
        logits.sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_time_batch_norm_inference_path_equals_batch_norm_over_frames() -> None:
    norm = TimeBatchNorm(num_frames=5)
    norm.train()
    for _ in range(20):  # move the running statistics away from their initial values
        norm(torch.randn(4, 3, 5, 6) * 3 + 1)
    norm.eval()
    x = torch.randn(2, 3, 5, 6)
    expected = F.batch_norm(x.transpose(1, 2), norm.norm.running_mean, norm.norm.running_var, norm.norm.weight,
                            norm.norm.bias, False, 0.0, norm.norm.eps).transpose(1, 2)
    torch.testing.assert_close(norm(x), expected)


def test_time_reversal_matters() -> None:
    """The two branches see different time directions: reversing the input changes the output."""
    torch.manual_seed(0)
    model = PLBNet(PLBConfig(num_classes=4)).eval()
    x = torch.randn(1, 1, 196, 39)
    assert not torch.allclose(model(x), model(torch.flip(x, dims=[2])))


def test_squash_keeps_direction_and_bounds_length() -> None:
    vectors = torch.tensor([[3.0, 4.0], [0.03, 0.04]])
    squashed = squash(vectors)
    lengths = squashed.norm(dim=-1)
    assert torch.all(lengths < 1)
    torch.testing.assert_close(lengths, torch.tensor([25 / 26, 0.0025 / 1.0025]), atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(squashed / lengths[:, None], vectors / vectors.norm(dim=-1, keepdim=True))


def test_per_channel_batch_norm_option_normalises_channels() -> None:
    network = PLBNet(PLBConfig(num_classes=8, frame_batchnorm=False)).eval()
    norms = [network.forward_block.norm, network.reverse_block.norm, network.dilated_block.norm]
    assert all(isinstance(n, torch.nn.BatchNorm2d) and n.num_features == 64 for n in norms)
    # Table 1's per-frame counts (4 x 194, 4 x 194, 4 x 93) become 4 x 64 each: 578 fewer trainable
    assert count_parameters(PLBNet(PLBConfig(num_classes=8))) - count_parameters(network) == 2 * (2 * 194 - 128) + (2 * 93 - 128)
    assert network(torch.randn(2, 1, 196, 39)).shape == (2, 8)
