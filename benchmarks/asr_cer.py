"""Greedy-decoding CER of a CTC pre-trained encoder (emostream asr-pretrain) on speakers it never
heard, beside the CER of the same network untrained (its initial weights, same seed and units).

    python benchmarks/asr_cer.py --encoder .devdata/asr-encoder --data ../shared/data/fsdd \
        --speakers theo,yweweler

Prints one JSON object: CER per corpus, the utterances and speakers scored, and examples.
"""

import argparse
import datetime
import json
import os
from dataclasses import replace
from pathlib import Path

import torch
from emostream.model.asr_checkpoint import load_pretrained
from emostream.model.asr_corpus import load_transcribed_corpus
from emostream.model.asr_crossval import held_out_transcripts
from emostream.model.asr_multitask import AsrMultitaskTransformer
from emostream.model.asr_training import extract_utterances, predict_utterances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", type=Path, required=True, help="folder written by emostream asr-pretrain")
    parser.add_argument("--data", type=Path, action="append", required=True, help="transcribed corpus; repeatable")
    parser.add_argument("--speakers", type=lambda text: set(text.split(",")), help="score only these speakers")
    parser.add_argument("--limit", type=int, help="at most N utterances per corpus")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    encoder = load_pretrained(args.encoder)
    trained = AsrMultitaskTransformer(encoder.config)
    trained.load_state_dict(encoder.state)
    torch.manual_seed(encoder.training.get("recipe", {}).get("seed", 0))
    untrained = AsrMultitaskTransformer(replace(encoder.config, emotion_token=False))
    report: dict[str, object] = {
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "encoder": str(args.encoder), "encoder_training_data": encoder.training.get("data"),
        "encoder_hours": encoder.training.get("hours"), "corpora": {}}
    for folder in args.data:
        clips = [c for c in load_transcribed_corpus(folder) if args.speakers is None or c.speaker in args.speakers]
        utterances, errors = extract_utterances(clips[: args.limit] if args.limit else clips)
        scored = {}
        for name, network in (("trained", trained), ("untrained", untrained)):
            _, pieces = predict_utterances(network, utterances.features, torch.device("cpu"))
            scored[name] = held_out_transcripts(encoder.tokenizer, pieces, utterances.transcripts)
        report["corpora"][str(folder)] = {  # type: ignore[index]
            "utterances": len(utterances), "speakers": sorted(set(utterances.speakers)), "unreadable": len(errors),
            "cer_trained": scored["trained"]["cer"], "cer_untrained": scored["untrained"]["cer"],
            "examples_trained": scored["trained"]["examples"]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
