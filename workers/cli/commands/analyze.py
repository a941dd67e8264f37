"""`emostream analyze FILE...`: offline, no broker: VAD-segment recordings and classify each utterance."""

import argparse
import json
import sys
from pathlib import Path

from emostream.schemas.settings import DEFAULT_MODEL
from emostream.workers.cli.commands._corpus import model_errors, reporting_errors


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("analyze", help="classify the emotion of each utterance in audio files")
    parser.add_argument("files", nargs="+", type=Path, help="WAV / FLAC / OGG, any common sample rate, mono")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="registry name or checkpoint folder (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of {start_s, end_s, label, scores}")
    parser.add_argument("--plot", type=Path, help="draw the emotion timeline as PNG (one file only)")
    parser.add_argument("--no-vad", action="store_true", help="classify each file as one utterance")
    parser.add_argument("--aggressiveness", type=int, default=2, choices=range(4), help="webrtcvad mode")
    parser.add_argument("--stereo", choices=["error", "mix"], default="error",
                        help="stereo input: refuse it (default) or mix the channels down")
    parser.set_defaults(handler=reporting_errors(run, model_errors))


def run(args: argparse.Namespace) -> int:
    from emostream.model.analysis import UtteranceResult, analyze_file, plot_timeline
    from emostream.model.audio_io import AudioInputError
    from emostream.model.registry import load_model
    from emostream.model.vad import EndpointerParams

    if args.plot and len(args.files) > 1:
        raise SystemExit("--plot draws one file's timeline; give one file")
    model = load_model(args.model)
    params = EndpointerParams(aggressiveness=args.aggressiveness)
    failures = 0
    all_results: dict[str, list[UtteranceResult]] = {}
    for path in args.files:
        try:
            results = analyze_file(path, model, params, use_vad=not args.no_vad, allow_stereo=args.stereo == "mix")
        except AudioInputError as error:
            print(f"error: {error}", file=sys.stderr)
            failures += 1
            continue
        all_results[str(path)] = results
        if not args.json:
            _print_table(path, results, model.labels)
    if args.json:
        if len(args.files) == 1:
            payload: object = [result.to_dict() for result in next(iter(all_results.values()), [])]
        else:
            payload = {path: [result.to_dict() for result in results] for path, results in all_results.items()}
        print(json.dumps(payload, indent=1))
    if args.plot and all_results:
        plot_timeline(next(iter(all_results.values())), model.labels, args.plot, title=str(args.files[0].name))
    return 1 if failures == len(args.files) else (2 if failures else 0)


def _print_table(path: Path, results: list, labels: tuple[str, ...]) -> None:
    print(f"{path}: {len(results)} utterance(s)")
    if not results:
        print("  no speech found")
        return
    print(f"  {'start_s':>8} {'end_s':>8}  {'label':<10} {'score':>6}   top-3")
    for result in results:
        top = sorted(result.scores.items(), key=lambda item: -item[1])[:3]
        print(f"  {result.start_s:8.2f} {result.end_s:8.2f}  {result.label:<10} {result.scores[result.label]:6.3f}   "
              + ", ".join(f"{label} {score:.2f}" for label, score in top))
