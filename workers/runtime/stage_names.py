"""The pipeline's stage names and the entry point that runs one stage's worker process.

One place for these facts: the stage runner (`emostream.workers.stages`), the local stack (which
starts worker processes) and the CLI (`emostream worker STAGE`) all read them from here.
"""

from enum import StrEnum

from emostream.schemas.settings import TopicSettings

__all__ = ["STAGE_ENTRY_MODULE", "StageName", "stage_input_topic"]

# `python -m emostream.workers.stages <stage>` runs one stage's worker (what the stack starts).
STAGE_ENTRY_MODULE = "emostream.workers.stages"


class StageName(StrEnum):
    """A stage of the pipeline; also its consumer group suffix and `emostream worker` argument."""

    VAD = "vad"
    INFERENCE = "inference"
    PLUGINS = "plugins"


def stage_input_topic(stage: StageName | str, topics: TopicSettings) -> str:
    """The topic a stage's workers consume."""
    return {
        StageName.VAD: topics.audio,
        StageName.INFERENCE: topics.segments,
        StageName.PLUGINS: topics.emotions,
    }[StageName(stage)]
