"""The end-pointer's own lag, in audio time: how long after an utterance's end plus the hangover the
VAD closes its segment, with no broker, worker or load in the way.

Each utterance of the speech fixture (cut as the streams benchmark cuts it, silence trimmed) is put
in digital silence, as the streams benchmark streams it, and fed to `model.vad.Endpointer` with the
settings' defaults `--push-ms` at a time. Printed per utterance: when the segment closed, beyond the
utterance's end + hangover, and where the segment's end sits after the speech's end (the padding
kept after the last voiced frame included). This is the floor of the streams benchmark's
"audio_to_vad" part, which adds the wait for the chunk holding the closing frame.

    python benchmarks/endpointer_lag.py [--push-ms 10]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from emostream.model.vad import Endpointer, EndpointerParams

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests._workers_helpers import fixture_utterance  # noqa: E402 - the benchmark's own utterances

SAMPLE_RATE_HZ = 16_000
LEAD_S, TAIL_S = 0.5, 2.0


def closing_lag_ms(speech: np.ndarray, params: EndpointerParams, push_ms: int) -> dict[str, float] | None:
    pcm = np.concatenate([np.zeros(int(LEAD_S * SAMPLE_RATE_HZ), np.int16), speech,
                          np.zeros(int(TAIL_S * SAMPLE_RATE_HZ), np.int16)])
    end_ms = 1000 * (int(LEAD_S * SAMPLE_RATE_HZ) + len(speech)) / SAMPLE_RATE_HZ
    endpointer, step = Endpointer(params), SAMPLE_RATE_HZ * push_ms // 1000
    for start in range(0, len(pcm), step):
        segments = endpointer.push(pcm[start : start + step].tobytes())
        if segments:
            closed_ms = 1000 * (start + step) / SAMPLE_RATE_HZ
            return {"closed_after_end_plus_hangover_ms": round(closed_ms - end_ms - params.hangover_ms, 1),
                    "segment_end_after_speech_end_ms": round(segments[0].end_ms - end_ms, 1)}
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--push-ms", type=int, default=10, help="audio per push (the end-pointer's input)")
    args = parser.parse_args()
    params = EndpointerParams()
    utterances = json.loads((REPO / "tests" / "fixtures" / "speech.json").read_text())["utterances"]
    rows = [{"utterance": index, "speech_s": round(len(fixture_utterance(index)) / SAMPLE_RATE_HZ, 2),
             **(closing_lag_ms(fixture_utterance(index), params, args.push_ms) or {"closed": None})}
            for index in range(len(utterances))]
    print(json.dumps({"endpointer": params.__dict__, "push_ms": args.push_ms, "utterances": rows}, indent=1))


if __name__ == "__main__":
    main()
