"""Cross-validation of a PLB recipe: the thesis's stratified 10-fold (speakers shared between folds)
and speaker-independent folds (grouped by speaker). Each fold is resumable (a training state every
`checkpoint_every_epochs`); finished folds are kept as JSON and weights and skipped on a re-run. On
these 2 cores one fold at a time with both threads beats two folds side by side."""

import json
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from emostream.model.feature_table import FeatureTable
from emostream.model.metrics import benefit_cost_ratio, fold_summary, score
from emostream.model.plb import (
    PLBConfig,
    PLBNet,
    count_parameters,
    count_parameters_with_bn_statistics,
)
from emostream.model.recipes import TrainingRecipe
from emostream.model.training import pick_device, predict_logits, train_plb
from emostream.schemas.model_card import FeatureSettings, ModelCard
from sklearn.model_selection import GroupKFold, StratifiedKFold

PROTOCOLS = ("stratified", "speaker")


@dataclass(frozen=True)
class FoldJob:
    table_path: str
    fold: int
    train_indices: list[int]
    test_indices: list[int]
    recipe: TrainingRecipe
    out_dir: str
    device: str
    progress: bool
    threads: int = 1
    config: PLBConfig | None = None  # None: the thesis's network for the table's label count
    call_normalisation: bool = False  # each speaker standardised with their own statistics (test speakers too)
    call_prior_frames: float = FeatureSettings().call_prior_frames


def make_folds(table: FeatureTable, protocol: str, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) indices per fold of the table's own clips; the clips of an added training corpus
    (`FeatureTable.with_training_corpus`) join every fold's training set, so its folds hold out the
    same clips as the main corpus's alone."""
    rows, extra = table.held_out_rows(), np.flatnonzero(table.training_only_mask())
    own = split_folds(table.label_ids[rows], [table.speakers[i] for i in rows], protocol, folds, seed)
    return [(np.concatenate([rows[train], extra]), rows[test]) for train, test in own]


def split_folds(label_ids: np.ndarray, speakers: list[str], protocol: str, folds: int, seed: int
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) indices per fold. Speaker folds depend only on the speaker set and its clip counts
    (not the clips' order), so every model trained on a corpus is held out on the same speakers."""
    indices = np.arange(len(label_ids))
    if protocol == "stratified":
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(indices, label_ids))
    if protocol == "speaker":
        if len(set(speakers)) < folds or "" in set(speakers):
            raise ValueError(f"speaker-independent folds need >= {folds} known speakers, "
                             f"found {len(set(speakers) - {''})}")
        return list(GroupKFold(n_splits=folds).split(indices, label_ids, groups=np.array(speakers)))
    raise ValueError(f"protocol {protocol!r} unknown; use one of {', '.join(PROTOCOLS)}")


def run_fold(job: FoldJob) -> dict[str, object]:
    out_dir = Path(job.out_dir)
    result_path = out_dir / f"fold-{job.fold:02d}.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    import torch

    if not job.progress and not logging.getLogger().handlers:  # a pool worker: keep the per-epoch log lines
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(job.threads)
    table = FeatureTable.load(Path(job.table_path))
    device = pick_device(job.device)
    train, test = np.array(job.train_indices), np.array(job.test_indices)
    config = job.config or PLBConfig(num_classes=len(table.labels))
    features, shift_per_db, prior = table.training_inputs(
        job.call_normalisation, train, job.call_prior_frames, job.recipe,
        job.table_path)
    call_prior = None if prior is None else {"mean": prior.mean.tolist(), "std": prior.std.tolist(),
                                             "frames": prior.frames}
    originals = features[:, 0] if features.ndim == 4 else features
    started = time.time()
    model, history = train_plb(
        features[train], table.label_ids[train], config, job.recipe, device,
        state_path=out_dir / f"fold-{job.fold:02d}.state.pt", progress=job.progress, description=f"fold {job.fold}",
        eval_set=(originals[test], table.label_ids[test]), shift_per_db=shift_per_db,
    )
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(out_dir / f"fold-{job.fold:02d}.safetensors"))  # for later analyses of the held-out fold
    (out_dir / f"fold-{job.fold:02d}.state.pt").unlink(missing_ok=True)
    logits = predict_logits(model, originals[test], device)
    predicted = logits.argmax(axis=1)
    result = {
        "fold": job.fold,
        "train_clips": len(train),
        "training_only_clips": int(table.training_only_mask()[train].sum()),
        "test_clips": len(test),
        "test_speakers": sorted({table.speakers[i] for i in test}),
        "test_indices": test.tolist(),
        "train_seconds": round(time.time() - started, 1),
        "recipe": job.recipe.to_dict(),
        "network": config.to_dict(),
        "waveform_variants": table.variants or ["original"],
        "call_prior": call_prior,  # None: no call normalisation; else test speakers use all their clips
        "final_train_loss": history[-1].loss if history else None,
        "final_train_accuracy": history[-1].train_accuracy if history else None,
        "learning_curve": [record.to_dict() for record in history],
        "test_logits": np.round(logits, 5).tolist(),  # for calibration fitted on held-out folds
        **score(table.label_ids[test].tolist(), predicted.tolist(), table.labels),
    }
    result_path.write_text(json.dumps(result, indent=1))
    return result


def summarise(results: list[dict[str, object]], table: FeatureTable, protocol: str, folds: int,
              recipe: TrainingRecipe) -> dict[str, object]:
    """The figures over the folds run (`folds_run`) of a `folds`-fold protocol."""
    ordered = sorted(results, key=lambda r: r["fold"])  # type: ignore[arg-type, return-value]
    network = ordered[0].get("network")  # the folds' own network: options such as frame_batchnorm change the count
    model = PLBNet(PLBConfig(**network) if isinstance(network, dict) else PLBConfig(num_classes=len(table.labels)))
    wars = [100 * float(r["war"]) for r in ordered]  # type: ignore[arg-type]
    uars = [100 * float(r["uar"]) for r in ordered]  # type: ignore[arg-type]
    confusion = np.sum([np.asarray(r["confusion_matrix"]) for r in results], axis=0)
    summary = fold_summary(wars)
    return {
        "protocol": protocol,
        "folds": folds,  # of the protocol; folds_run says which were run
        "folds_run": [r["fold"] for r in ordered],
        "clips": len(table.held_out_rows()),
        "training_only_clips": int(table.training_only_mask().sum()),  # of added corpora, in every fold
        "labels": table.labels,
        "recipe": recipe.to_dict(),
        "network": ordered[0].get("network"),
        "waveform_variants": table.variants or ["original"],
        "call_normalisation": bool(ordered[0].get("call_prior")),
        "final_train_accuracy_per_fold": [r.get("final_train_accuracy") for r in ordered],
        "war_percent_per_fold": [round(w, 2) for w in wars],
        "war_percent": {k: round(v, 2) for k, v in summary.items()},
        "uar_percent_per_fold": [round(u, 2) for u in uars],
        "uar_percent": {k: round(v, 2) for k, v in fold_summary(uars).items()},
        "uar_percent_avg": round(float(np.mean(uars)), 2),
        "macro_f1_per_fold": [round(float(r["macro_f1"]), 4) for r in ordered],  # type: ignore[arg-type]
        "macro_f1_avg": round(float(np.mean([r["macro_f1"] for r in results])), 4),
        "confusion_matrix_pooled": confusion.tolist(),
        "parameters": count_parameters(model),
        "parameters_with_bn_statistics": count_parameters_with_bn_statistics(model),
        "benefit_cost_ratio_x1e5": round(1e5 * benefit_cost_ratio(summary["avg"], count_parameters_with_bn_statistics(model)), 4),
    }


def run_crossval(
    table_path: Path, out_dir: Path, protocol: str, folds: int, recipe: TrainingRecipe, device: str = "auto",
    workers: int = 1, only_folds: list[int] | None = None, progress: bool = True, config: PLBConfig | None = None,
    call_normalisation: bool = False,
) -> dict[str, object]:
    table = FeatureTable.load(table_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        FoldJob(str(table_path), fold, train.tolist(), test.tolist(), recipe, str(out_dir), device,
                progress and workers == 1, threads=max(1, len(os.sched_getaffinity(0)) // workers),
                config=config, call_normalisation=call_normalisation)
        for fold, (train, test) in enumerate(make_folds(table, protocol, folds, recipe.seed))
        if only_folds is None or fold in only_folds
    ]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.map(run_fold, jobs, chunksize=1)
    else:
        results = [run_fold(job) for job in jobs]
    summary = summarise(results, table, protocol, folds, recipe)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def load_fold_network(out_dir: Path, fold: int) -> tuple[PLBNet, dict[str, object]]:
    """A finished fold's network (weights + the options it was trained with) and its result JSON."""
    from safetensors.torch import load_file

    result = json.loads((out_dir / f"fold-{fold:02d}.json").read_text())
    network = PLBNet(PLBConfig(**result["network"]))
    network.load_state_dict(load_file(str(out_dir / f"fold-{fold:02d}.safetensors")))
    return network.eval(), result


def serve_fold(out_dir: Path, fold: int, labels: list[str], folder: Path, features: FeatureSettings):
    """A finished fold's network written as a checkpoint in `folder` and loaded as the served model
    (`PLBEmotionModel`), for benchmarks that score fold models the way the pipeline serves them.
    Returns (model, the fold's result JSON)."""
    from emostream.model.checkpoint import save_checkpoint
    from emostream.model.plb_model import PLBEmotionModel

    network, result = load_fold_network(out_dir, fold)
    prior = result.get("call_prior")
    if prior:
        features = features.with_call_prior(prior["mean"], prior["std"], prior["frames"])
    card = ModelCard(name=f"fold-{fold}", version="cv", architecture="plb", labels=labels, features=features,
                     architecture_options=network.config.to_dict(), parameter_count=count_parameters(network),
                     weights_file="", weights_sha256="")
    save_checkpoint(network, card, folder)
    return PLBEmotionModel(folder), result
