"""``--test-run``: a dry run that exercises a trainer end to end and cannot hurt a real run.

Like Lightning's ``fast_dev_run``: a few iterations under a throwaway run id, in a temporary
folder, with W&B disabled. It trains half of them, saves a checkpoint, then resumes from that
checkpoint (in the same runner, so Ray workers restore as they would after a failure) and
trains the rest. Nothing of the real run is read or written.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import uuid
from collections.abc import Callable

from raytrainer import storage
from raytrainer.build import resolve_settings, run_uri
from raytrainer.checkpoint.layout import METADATA_FILE, TEST_RUNS_DIR, checkpoint_dir_name
from raytrainer.errors import RunFailedError
from raytrainer.params import HyperParameters
from raytrainer.runners.result import RunResult
from raytrainer.settings import ExperimentSettings

Runner = Callable[[HyperParameters, ExperimentSettings], RunResult]


def dry_run(
    hyper_params: HyperParameters, settings: ExperimentSettings, runner: Runner
) -> RunResult:
    """Run ``settings.test_run`` iterations as a throwaway run with ``runner``; check resume.

    Returns the second half's result (under the throwaway run id); its folder is deleted.

    Raises
    ------
    RunFailedError
        If the first half saved no checkpoint, or the second did not resume from it (the
        throwaway folder is kept for a look, and named).
    """
    real = resolve_settings(hyper_params, settings)
    total, half = settings.test_run, settings.test_run // 2
    run_id = f"{real.run_id}-test-{uuid.uuid4().hex[:6]}"
    root = str(real.storage_path)
    if storage.is_uri(root):  # workers on other machines must reach it: keep to the storage
        root = storage.join(root, TEST_RUNS_DIR)
    else:
        root = tempfile.mkdtemp(prefix="raytrainer-test-run-")
    throwaway = dataclasses.replace(
        settings,
        run_id=run_id,
        storage_path=root,
        data_root=real.data_root or storage.root_of(real.storage_path),  # the real data cache
        wandb_mode="disabled",
        test_run=0,
        restart=False,
        do_not_load_checkpoint=False,
        checkpoint_period=half,
        num_to_keep=None,
    )
    logger = settings.get_logger()
    logger.info(
        "test run of %s: %d iterations as %s in %s, W&B disabled; the real run is not touched.",
        real.run_id,
        total,
        run_id,
        root,
    )
    runner(hyper_params.model_copy(update={"num_iterations": half}), throwaway)
    result = runner(hyper_params.model_copy(update={"num_iterations": total}), throwaway)
    location = run_uri(throwaway)
    metadata = storage.read_json(
        storage.join(location, checkpoint_dir_name(result.iteration), METADATA_FILE)
    )
    resumed = ((metadata or {}).get("restored_from") or {}).get("iteration")
    if metadata is None or resumed != half:
        raise RunFailedError(
            f"test run failed: after {total} iterations the run {location} has "
            + (
                f"no checkpoint at iteration {result.iteration}"
                if metadata is None
                else f"resumed from iteration {resumed}, not {half}"
            )
            + "; does train() call save_checkpoint() when iteration % "
            "settings.checkpoint_period == 0, and loop while iteration < num_iterations?"
        )
    logger.info(
        "test run passed: trained %d iterations, saved a checkpoint, resumed from it and "
        "trained to %d.",
        half,
        total,
    )
    if storage.is_uri(root):
        storage.delete_dir(location)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return dataclasses.replace(result, storage_uri=location)
