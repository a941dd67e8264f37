"""The stream stages (VAD and its per-stream state, inference, plugin runner) and their runner.

`python -m emostream.workers.stages STAGE` runs one stage's worker. Imports `runtime` only (never
`stack` or `cli`)."""
