"""Length bucketing of variable-length training (UtteranceTask.epoch_order): every utterance once
per epoch, batches cut from length-sorted pools so far less padding than random batches, the batch
order drawn from the task's own generator (saved in the training state), and off on request."""

import numpy as np
import torch
from emostream.model.asr_training import FRAME_BUCKET_FRAMES, UtteranceSet, UtteranceTask
from emostream.schemas.model_card import FeatureSettings

BATCH = 8


def _task(length_bucketing: bool = True, seed: int = 0) -> UtteranceTask:
    rng = np.random.default_rng(0)
    frames = rng.integers(100, 1_000, size=203)  # 1-10 s utterances, as the synthetic corpus has
    features = [np.zeros((int(n), 2), dtype=np.float32) for n in frames]
    utterances = UtteranceSet(features, [""] * len(frames), ["s"] * len(frames), ["a"] * len(frames),
                              FeatureSettings(kind="logmel-utterance-mean", n_coefficients=2, long_input="whole"))
    return UtteranceTask(utterances, torch.device("cpu"), label_ids=np.zeros(len(frames), dtype=np.int64),
                         seed=seed, length_bucketing=length_bucketing)


def _padded_frames(task: UtteranceTask, order: torch.Tensor) -> int:
    batches = order[: len(order) // BATCH * BATCH].view(-1, BATCH).numpy()
    return sum(-(-int(task.frames_host[b].max()) // FRAME_BUCKET_FRAMES) * FRAME_BUCKET_FRAMES * BATCH
               for b in batches)


def test_bucketed_batches_hold_every_utterance_once_with_far_less_padding() -> None:
    task = _task()
    permutation = torch.randperm(task.examples, generator=torch.Generator().manual_seed(1))
    order = task.epoch_order(permutation, BATCH)
    assert sorted(order.tolist()) == list(range(task.examples))
    bucketed, shuffled = _padded_frames(task, order), _padded_frames(task, permutation)
    speech = int(task.frames_host.sum())
    assert bucketed < 0.75 * shuffled  # random batches of 1-10 s pad ~half; sorted pools a few per cent
    assert bucketed < 1.15 * speech


def test_the_batch_order_comes_from_the_task_generator_and_bucketing_can_be_turned_off() -> None:
    permutation = torch.randperm(203, generator=torch.Generator().manual_seed(1))
    first, again = _task(seed=0), _task(seed=0)
    assert set(first.generators()) == {"batch_order"}
    epoch_1 = first.epoch_order(permutation, BATCH)
    assert torch.equal(epoch_1, again.epoch_order(permutation, BATCH))  # same seed, same draws
    assert not torch.equal(epoch_1, first.epoch_order(permutation, BATCH))  # the next epoch draws anew
    assert not torch.equal(epoch_1, _task(seed=5).epoch_order(permutation, BATCH))
    plain = _task(length_bucketing=False)
    assert plain.generators() == {} and torch.equal(plain.epoch_order(permutation, BATCH), permutation)
    assert "bucketing=True" in first.identity()["task"] and "bucketing=False" in plain.identity()["task"]
