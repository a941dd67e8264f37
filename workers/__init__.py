"""emostream.workers: everything that runs the pipeline, by job, one subpackage each.

| subpackage | job | may import (of ours) |
|---|---|---|
| `runtime/` | what the stages share: faust app, Kafka config, codecs, topics, result store, dead letters, metrics, stage names | `schemas`, `model`, `plugins` |
| `stages/` | the stream stages (VAD + its per-stream state, inference, plugin runner) and their runner (`python -m emostream.workers.stages STAGE`) | `runtime` (+ the above) |
| `stack/` | the local stack: broker / Redis processes, supervised worker processes, settings <-> environment | `runtime` (+ the above) |
| `cli/` | the `emostream` command, its sub-commands and clients (`send`, `tail`) | `stack`, `stages`, `runtime` (+ the above) |

The rule, checked by `tests/test_layering.py`: CLI -> stack and stages -> runtime; nothing below
imports anything above, `stages` and `stack` never import each other (the stack starts stages as
processes by module name), and `model/` and `plugins/` never import each other or `workers/`.
"""
