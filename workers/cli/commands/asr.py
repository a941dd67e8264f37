"""`emostream asr-pretrain`, `asr-finetune` and `asr-synthesise`: the ASR-multitask transformer's
recipes (seed 001; model/ASR_MULTITASK.md), beside `emostream train` for PLB."""

import argparse
import json
from pathlib import Path

from emostream.workers.cli.commands._corpus import (
    log_progress,
    report_skipped,
    reporting_errors,
    split_overrides,
)

NETWORK_SIZES = ("small", "paper")  # model/asr_multitask.py: SMALL (2 CPU cores) or the paper's 69 M


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, action="append",
                        help="corpus folder: labels.csv with path,transcript[,speaker,label] columns, or "
                        "LibriSpeech's <speaker>/<chapter>/*.trans.txt layout; repeatable (the corpora are joined)")
    parser.add_argument("--layout", default="auto", choices=["auto", "csv", "librispeech"])
    parser.add_argument("--exclude-speakers", type=lambda text: set(text.split(",")), default=set(),
                        metavar="NAME,...", help="leave these speakers' clips out (e.g. held out to measure CER)")
    parser.add_argument("--limit", type=int, help="use only the first N clips (smoke runs)")
    parser.add_argument("--out", type=Path, required=True, help="output folder; training resumes from it")
    parser.add_argument("--size", choices=NETWORK_SIZES, default="small",
                        help="small: SMALL (1.8 M parameters, trains on 2 CPU cores); paper: 69 M (a GPU)")
    parser.add_argument("--epochs", type=int, help="default: the paper's (25 pre-training, 20 fine-tuning)")
    parser.add_argument("--batch-size", type=int, help="default: the paper's (64 pre-training, 32 fine-tuning, "
                        "40 baseline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override one recipe or network field, e.g. learning_rate=1e-3 or blocks=4; "
                        "repeatable; fields: model/recipes.py, model/asr_multitask.py")
    parser.add_argument("--describe-data", default="", help="text for the card's training.data")
    parser.add_argument("--eager", action="store_true", help="do not torch.compile the training step")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: every core this process "
                        "may use); 1 for tiny networks, whose steps are too small to share")
    parser.add_argument("--quiet", action="store_true", help="no progress bar; one log line per epoch")


def _add_finetuning_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--mode", choices=["tl+mtl", "tl", "scratch", "baseline"], default="tl+mtl",
                        help="Table 1's rows: tl+mtl and tl need --pretrained")
    parser.add_argument("--pretrained", type=Path, help="folder written by emostream asr-pretrain")
    parser.add_argument("--alpha", type=float, help="CTC weight of equation 8 (default 0.6 for tl+mtl, 0 else)")


def register(subcommands: argparse._SubParsersAction) -> None:
    pretrain = subcommands.add_parser("asr-pretrain", help="CTC pre-training of the ASR-multitask transformer "
                                      "on a transcribed corpus (writes an encoder folder)")
    _add_common(pretrain)
    pretrain.add_argument("--vocabulary", type=int, help="BPE pieces (default: the size's: 256 small, 5,000 "
                          "paper); a small corpus supports fewer, and the error says how many")
    pretrain.set_defaults(handler=reporting_errors(run_pretrain, _bad_input))

    finetune = subcommands.add_parser("asr-finetune", help="emotion fine-tuning (TL+MTL, TL, scratch or the "
                                      "CNN-BLSTM-SA baseline) on a labelled, transcribed corpus")
    _add_finetuning_arguments(finetune)
    finetune.add_argument("--name", required=True, help="registry name, e.g. asr-ravdess8")
    finetune.add_argument("--version", default="1", help="model version (part of every result's idempotency key)")
    finetune.set_defaults(handler=reporting_errors(run_finetune, _bad_input))

    crossval = subcommands.add_parser("asr-crossval", help="speaker-independent folds of one fine-tuning mode "
                                      "(held out on the same speakers as PLB's crossval --protocol speaker)")
    _add_finetuning_arguments(crossval)
    crossval.add_argument("--folds", type=int, default=5)
    crossval.add_argument("--only-folds", type=int, nargs="*", help="run just these fold numbers (0-based)")
    crossval.set_defaults(handler=reporting_errors(run_crossval, _bad_input))

    synthesise = subcommands.add_parser("asr-synthesise", help="write a synthetic transcribed corpus with "
                                        "espeak-ng (varied voices, rates and pitches)")
    synthesise.add_argument("--out", type=Path, required=True, help="folder for the FLAC files and labels.csv")
    synthesise.add_argument("--utterances", type=int, default=1000)
    synthesise.add_argument("--seed", type=int, default=0)
    synthesise.add_argument("--text", choices=["prose", "templates"], default="prose",
                            help="prose: sentences of the Python standard library's docstrings (~4,700 words); "
                            "templates: short sentences from a fixed list of ~110 words (default: %(default)s)")
    synthesise.add_argument("--workers", type=int, default=2, help="espeak-ng processes at once")
    synthesise.set_defaults(handler=reporting_errors(run_synthesise, _bad_input))


def _bad_input() -> tuple[type[Exception], ...]:
    """A corpus, checkpoint, tokenizer or training state that does not fit, or espeak-ng missing."""
    from emostream.model.asr_corpus import AsrCorpusError
    from emostream.model.checkpoint import CheckpointError
    from emostream.model.synthetic_speech import EspeakNotInstalledError
    from emostream.model.tokenizer import TokenizerError
    from emostream.model.training import TrainingStateError

    return AsrCorpusError, CheckpointError, TokenizerError, TrainingStateError, EspeakNotInstalledError, ValueError


def _clips(args: argparse.Namespace, emotion_column: str | None):
    from emostream.model.asr_corpus import load_transcribed_corpus

    clips = [clip for folder in args.data for clip in load_transcribed_corpus(folder, args.layout,
                                                                              emotion_column=emotion_column)
             if clip.speaker not in args.exclude_speakers]
    return clips[: args.limit] if args.limit else clips


def _describe_data(args: argparse.Namespace) -> str:
    excluded = f" without speakers {','.join(sorted(args.exclude_speakers))}" if args.exclude_speakers else ""
    return args.describe_data or " + ".join(str(folder) for folder in args.data) + excluded


def _threads(args: argparse.Namespace) -> None:
    import os

    import torch

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))  # the cores it may use (taskset, cgroups)


def run_pretrain(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from emostream.model.asr_multitask import SMALL, AsrMultitaskConfig
    from emostream.model.asr_release import run_pretraining
    from emostream.model.recipes import TrainingRecipe, asr_pretraining_recipe

    _threads(args)
    log_progress(args)
    recipe_fields, network_fields = split_overrides(args.set, TrainingRecipe, AsrMultitaskConfig)
    config = replace(SMALL if args.size == "small" else AsrMultitaskConfig(), **network_fields)  # type: ignore[arg-type]
    if args.vocabulary:
        config = replace(config, vocabulary=args.vocabulary)
    recipe = asr_pretraining_recipe(args.epochs or 25, seed=args.seed, compile=not args.eager, **recipe_fields,
                                    **({"batch_size": args.batch_size} if args.batch_size else {}))
    path, errors = run_pretraining(_clips(args, None), config, recipe, args.out,
                                   _describe_data(args), args.device, progress=not args.quiet)
    report_skipped(errors)
    description = json.loads(path.read_text())
    print(json.dumps({"folder": str(args.out), "utterances": description["training"]["utterances"],
                      "final_train_loss": description["training"]["final_train_loss"],
                      "vocabulary": description["config"]["vocabulary"]}))
    return 0


def _finetuning(args: argparse.Namespace):  # -> (FineTuningMode, network config, TrainingRecipe)
    from dataclasses import replace

    from emostream.model.asr_multitask import SMALL, AsrMultitaskConfig, CnnBlstmSaConfig
    from emostream.model.asr_training import FineTuningMode
    from emostream.model.recipes import TrainingRecipe, asr_finetuning_recipe, baseline_recipe

    mode = FineTuningMode(args.mode)
    network_class = CnnBlstmSaConfig if mode is FineTuningMode.BASELINE else AsrMultitaskConfig
    recipe_fields, network_fields = split_overrides(args.set, TrainingRecipe, network_class)
    if mode is FineTuningMode.BASELINE:
        config: AsrMultitaskConfig | CnnBlstmSaConfig = replace(CnnBlstmSaConfig(), **network_fields)  # type: ignore[arg-type]
        make_recipe = baseline_recipe
    else:
        config = replace(SMALL if args.size == "small" else AsrMultitaskConfig(), **network_fields)  # type: ignore[arg-type]
        make_recipe = asr_finetuning_recipe
    recipe = make_recipe(args.epochs or 20, seed=args.seed, compile=not args.eager, **recipe_fields,
                         **({"batch_size": args.batch_size} if args.batch_size else {}))
    return mode, config, recipe


def run_finetune(args: argparse.Namespace) -> int:
    from emostream.model.asr_release import run_finetuning

    _threads(args)
    log_progress(args)
    mode, config, recipe = _finetuning(args)
    card, errors = run_finetuning(_clips(args, "label"), mode, recipe, args.out, name=args.name,
                                  version=args.version, data_description=_describe_data(args),
                                  pretrained_folder=args.pretrained, config=config, ctc_weight=args.alpha,
                                  device=args.device, progress=not args.quiet)
    report_skipped(errors)
    print(json.dumps({"name": card.name, "version": card.version, "folder": str(args.out),
                      "architecture": card.architecture, "parameters": card.parameter_count,
                      "labels": card.labels, "transcribes": bool(card.architecture_options.get("transcribes"))}))
    return 0


def run_crossval(args: argparse.Namespace) -> int:
    from emostream.model.asr_crossval import run_asr_crossval

    _threads(args)
    log_progress(args)
    mode, config, recipe = _finetuning(args)
    summary, errors = run_asr_crossval(_clips(args, "label"), mode, recipe, args.out, args.folds, args.only_folds,
                                       pretrained_folder=args.pretrained, config=config, ctc_weight=args.alpha,
                                       device=args.device, progress=not args.quiet)
    report_skipped(errors)
    print(json.dumps(summary, indent=1))
    return 0


def run_synthesise(args: argparse.Namespace) -> int:
    from emostream.model.synthetic_speech import synthesise_corpus

    labels = synthesise_corpus(args.out, args.utterances, args.seed, args.text, args.workers)
    print(json.dumps({"labels": str(labels), "utterances": args.utterances}))
    return 0
