"""The one training loop: accumulate, autocast, scale, clip, step, log, checkpoint. Recipes supply the hooks of
training/recipe.py and nothing else is asked of them; callers may add :class:`Callbacks`.

Device, precision and the loss scaler are decided once, before the loop (``devices.build_accelerator``);
the loop has no device or dtype branches. accelerate owns launch, DDP, autocast, backward and accumulation.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import checkpoint, devices, optim, paths
from ..environment import check_environment
from ..errors import UserError, first_line
from ..logs import setup_logging
from . import data_loader, faults, model_card, validation
from .config import TrainConfig
from .recipe import Recipe
from .run_stats import RunStats

logger = logging.getLogger("diffusers_npu.train")


@dataclass(frozen=True)
class Callbacks:
    """Functions the loop calls on every process: ``after_step(step)`` after each optimizer step's bookkeeping,
    ``after_checkpoint(step, path)`` once checkpoint ``path`` is complete on disk."""

    after_step: tuple[Callable[[int], None], ...] = ()
    after_checkpoint: tuple[Callable[[int, Path], None], ...] = ()


# --report_to name -> the packages any one of which provides it (accelerate skips a missing tracker silently).
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def _check_trackers(report_to: str | None) -> None:
    import importlib.util

    for name in TRACKER_PACKAGES if report_to == "all" else [report_to] if report_to else []:
        if not any(importlib.util.find_spec(p) for p in TRACKER_PACKAGES[name]):
            raise UserError(f"--report_to {report_to} needs {name}: pip install {TRACKER_PACKAGES[name][0]}")


def _load(recipe: Recipe, cfg: TrainConfig) -> None:
    """``recipe.load()``; a damaged model file (truncated, not safetensors, wrong shapes) is one line naming it."""
    from safetensors import SafetensorError

    try:
        recipe.load()
    except (OSError, SafetensorError, RuntimeError, ValueError) as err:
        first = first_line(err)
        raise UserError(f"--pretrained_model_name_or_path {cfg.pretrained_model_name_or_path} could not be loaded "
                        f"({first}); check the model folder's files or download it again") from None  # fmt: skip


def _setup(recipe: Recipe, cfg: TrainConfig):
    """Everything before the first step: accelerator, models, data, optimizer, schedule, resume."""
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler

    out = Path(cfg.output_dir)
    device = devices.get_device(cfg.device)
    _check_trackers(cfg.report_to)
    resume = checkpoint.resolve_resume(out, cfg.resume_from_checkpoint)
    settings = faults.settings(cfg, type(recipe).__name__)
    if resume is not None:  # fail before any work, and before anything is written
        manifest = checkpoint.verify_checkpoint(resume)
        faults.check_resume_settings(manifest, settings, resume, cfg.allow_changed_settings)
    accelerator = devices.build_accelerator(
        device, cfg.mixed_precision, cfg.gradient_accumulation_steps, cfg.loss_scale, cfg.init_loss_scale,
        log_with=cfg.report_to, project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / cfg.logging_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )  # fmt: skip
    set_seed(cfg.seed)
    weight_dtype = devices.parse_dtype(cfg.mixed_precision)
    torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
    _load(recipe, cfg)
    recipe.prepare(accelerator.device, device.kind, weight_dtype)
    loader = data_loader.build(recipe, cfg, accelerator, device, out)
    lr = cfg.learning_rate
    if cfg.scale_lr:
        lr *= cfg.train_batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes
    params = recipe.trainable_parameters()
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    optimizer = optim.build_optimizer(
        cfg.optimizer, params, device.kind, lr, betas, cfg.adam_weight_decay, cfg.adam_epsilon
    )
    steps_per_epoch = math.ceil(len(loader) / cfg.gradient_accumulation_steps)
    max_steps = cfg.max_train_steps or cfg.num_train_epochs * steps_per_epoch
    schedule = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
                             num_training_steps=max_steps * accelerator.num_processes)  # fmt: skip
    trained = recipe.trainable_model()
    if cfg.torch_compile:  # Module.compile: compiled in place, so state_dict keys (checkpoints) stay the same
        trained.compile(backend=cfg.torch_compile)
    model, optimizer, schedule = accelerator.prepare(trained, optimizer, schedule)
    ema = recipe.make_ema()
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    trainable_only = any(not p.requires_grad for p in model.parameters())  # LoRA: frozen base + adapters
    if trainable_only:
        checkpoint.save_trainable_only(accelerator)
    step = checkpoint.load_checkpoint(accelerator, resume, trainable_only)["step"] if resume is not None else 0
    later = [p.name for p in checkpoint.list_checkpoints(out) if checkpoint.step_of(p) > step]
    if later and accelerator.is_main_process:
        logger.warning("%s holds %s from another run: pruning keeps them, and --resume_from_checkpoint latest would "
                       "pick the last of them; use another --output_dir to keep runs apart", out, ", ".join(later))  # fmt: skip
    if cfg.report_to and accelerator.is_main_process:
        accelerator.init_trackers(
            "diffusers-npu", config={k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))}
        )
    return Run(
        cfg,
        recipe,
        device,
        accelerator,
        model,
        optimizer,
        loader,
        schedule,
        params,
        ema,
        step,
        steps_per_epoch,
        max_steps,
        out,
        trainable_only,
        settings,
    )


@dataclass
class Run:
    """The prepared objects of one run (built by ``_setup``)."""

    cfg: TrainConfig
    recipe: Recipe
    device: devices.Device
    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: object
    schedule: object
    params: list
    ema: object
    step: int
    steps_per_epoch: int
    max_steps: int
    out: Path
    trainable_only: bool = False  # checkpoints hold the trainable parameters only (checkpoint.save_trainable_only)
    settings: dict = field(default_factory=dict)  # recorded in each checkpoint, compared on resume
    callbacks: Callbacks = field(default_factory=Callbacks)
    grad_norm: torch.Tensor | None = None  # the last step's, before clipping
    last_grid: Path | None = None  # the last validation's images, for the model card


def _micro_step(run: Run, batch: dict) -> torch.Tensor:
    """One micro-batch: encode (unless cached), forward under autocast, backward, and on the last
    micro-batch of an accumulation window: unscale+clip, optimizer step, LR step, zero_grad."""
    cfg, acc, recipe = run.cfg, run.accelerator, run.recipe
    zero_grad_kwargs = optim.get_spec(cfg.optimizer).zero_grad_kwargs
    with acc.accumulate(run.model):
        encoded = batch if cfg.caches else recipe.encode_batch(batch)
        with acc.autocast():
            loss = recipe.per_sample_loss(run.model, encoded).mean()
        acc.backward(loss)
        if acc.sync_gradients and cfg.max_grad_norm > 0:
            run.grad_norm = optim.clip_grad_norm(
                run.params, cfg.max_grad_norm, run.optimizer, acc.scaler, cfg.clip_grad_norm_fused
            )
        run.optimizer.step()
        run.schedule.step()
        run.optimizer.zero_grad(**zero_grad_kwargs)
    return acc.gather(loss.detach()[None]).mean() / cfg.gradient_accumulation_steps


def _after_step(run: Run, stats: RunStats, bar) -> None:
    """Bookkeeping at an optimizer-step boundary: EMA, logs, checkpoint, pruning."""
    cfg, acc = run.cfg, run.accelerator
    if run.ema is not None:
        run.ema.step(acc.unwrap_model(run.model).parameters())
    logs = {"loss": stats.step_losses[-1], "lr": run.schedule.get_last_lr()[0], "step_time_s": stats.step_times_s[-1]}
    if cfg.report_to:  # read from the device only for a tracker
        logs["data_wait_s"] = stats.data_waits_s[-1]
        if run.grad_norm is not None:
            logs["grad_norm"] = float(run.grad_norm)  # before clipping
        if acc.scaler is not None and acc.scaler.is_enabled():
            logs["loss_scale"] = float(acc.scaler.get_scale())
    bar.set_postfix(step_loss=f"{logs['loss']:.4f}", lr=logs["lr"])
    acc.log(logs, step=run.step)
    if acc.is_main_process and (run.step % cfg.logging_steps == 0 or run.step == run.max_steps):
        logger.info(
            "step %d loss=%.6f lr=%.3g step_time_s=%.4f", run.step, logs["loss"], logs["lr"], logs["step_time_s"]
        )
    if run.step % cfg.checkpointing_steps == 0 or run.step == run.max_steps:
        _checkpoint(run)
    if acc.is_main_process and validation.due(cfg, run.step):
        _validate(run)
    for callback in run.callbacks.after_step:
        callback(run.step)


def _require_finite_weights(run: Run, before: str) -> None:
    if faults.nonfinite_parameters(run.params):
        raise faults.Diverged(f"the trained weights hold NaN or inf after step {run.step}, so {before} was not "
                              f"written; the last good checkpoint is {_last_good(run)}: lower --learning_rate or "
                              "keep --max_grad_norm on")  # fmt: skip


def _last_good(run: Run) -> str:
    found = checkpoint.list_checkpoints(run.out)
    return found[-1].name if found else "none (start again)"


def _checkpoint(run: Run) -> Path:
    """``checkpoint-<step>`` of every process's state, never of non-finite weights; prune; callbacks."""
    acc = run.accelerator
    _require_finite_weights(run, f"checkpoint-{run.step}")
    model = acc.unwrap_model(run.model)
    path = checkpoint.save_checkpoint(acc, run.out, run.step, {checkpoint.TRAINABLE_ONLY: run.trainable_only,
                                                               "settings": run.settings},
                                      lambda directory: run.recipe.save_checkpoint_model(model, directory))  # fmt: skip
    if acc.is_main_process:
        checkpoint.prune_checkpoints(run.out, run.cfg.checkpoints_total_limit, run.step)
        logger.info("saved %s", path)
    for callback in run.callbacks.after_checkpoint:
        callback(run.step, path)
    return path


def _epochs(run: Run):
    """Batches from the resume position on: seeded per-epoch shuffles, the consumed part skipped."""
    first_epoch = run.step // run.steps_per_epoch
    skip = (run.step % run.steps_per_epoch) * run.cfg.gradient_accumulation_steps
    epoch = first_epoch
    while True:
        run.loader.set_epoch(epoch)
        loader = run.accelerator.skip_first_batches(run.loader, skip) if epoch == first_epoch and skip else run.loader
        yield epoch, loader
        epoch += 1


def run(recipe: Recipe, cfg: TrainConfig, callbacks: Callbacks | None = None) -> RunStats:
    """Train ``recipe`` as ``cfg`` says; save its weights; print and return the run's measurements.

    The output folder is locked for the run (one run per folder); SIGTERM / SIGINT end it with a checkpoint."""
    check_environment()
    setup_logging()
    out = paths.output_dir(cfg.output_dir)  # before any work: a file or an unwritable place is refused now
    lock = faults.OutputLock(out)
    if int(os.environ.get("RANK", "0")) == 0:
        lock.acquire()
    preemption = faults.Preemption()
    if threading.current_thread() is threading.main_thread():
        preemption.install()
    try:
        return _train(recipe, cfg, callbacks, preemption)
    finally:
        preemption.uninstall()
        lock.release()


def _train(recipe: Recipe, cfg: TrainConfig, callbacks: Callbacks | None, preemption: faults.Preemption) -> RunStats:
    start = time.perf_counter()
    r = _setup(recipe, cfg)
    r.callbacks = callbacks or Callbacks()
    acc = r.accelerator
    stats = RunStats(
        cfg.train_batch_size * acc.num_processes * cfg.gradient_accumulation_steps, cfg.timing_warmup_steps
    )
    bar = tqdm(
        total=r.max_steps,
        initial=r.step,
        desc="steps",
        disable=not (acc.is_local_main_process and sys.stderr.isatty()),
    )
    r.device.reset_peak_memory()
    window_loss, wait_s, mark = 0.0, 0.0, time.perf_counter()
    skipped, scaler_on = 0, acc.scaler is not None and acc.scaler.is_enabled()
    for epoch, loader in _epochs(r):
        if r.step >= r.max_steps:
            break
        wait_start = time.perf_counter()
        for batch in loader:
            wait_s += time.perf_counter() - wait_start
            window_loss += _micro_step(r, batch).item()  # .item() syncs the device once per micro-batch
            if acc.sync_gradients:
                r.device.synchronize()
                now = time.perf_counter()
                r.step += 1
                skipped = skipped + 1 if acc.optimizer_step_was_skipped else 0  # fp16 overflow: the scaler skipped
                if not faults.step_ok(window_loss, skipped, cfg.max_skipped_steps, scaler_on):
                    raise faults.diverged(window_loss, r.step, skipped, _last_good(r))
                stats.step_losses.append(window_loss)
                stats.step_times_s.append(now - mark - wait_s)
                stats.data_waits_s.append(wait_s)
                bar.update(1)
                _after_step(r, stats, bar)
                signum = preemption.requested(acc)
                if signum is not None:
                    _stop_for(r, signum)
                window_loss, wait_s, mark = 0.0, 0.0, time.perf_counter()
                if r.step >= r.max_steps:
                    break
            wait_start = time.perf_counter()
        if acc.is_main_process and validation.due(cfg, r.step, epoch_end=epoch):
            _validate(r)
            mark = time.perf_counter()
    bar.close()
    acc.wait_for_everyone()
    if acc.is_main_process:
        _save_final(r)
    stats.peak_mem_gib = r.device.peak_memory_gib()
    stats.time_s = time.perf_counter() - start
    acc.end_training()
    if acc.is_main_process:
        print(stats.summary_line(), flush=True)
    return stats


def _stop_for(r: Run, signum: int) -> None:
    """Preempted: a checkpoint of this step (unless it was just written), how to resume, the signal's exit code."""
    import signal

    done = r.out / f"{checkpoint.PREFIX}{r.step}"
    path = done if done.is_dir() and checkpoint.list_checkpoints(r.out)[-1:] == [done] else _checkpoint(r)
    r.accelerator.end_training()
    if r.accelerator.is_main_process:
        logger.warning("stopped by %s at step %d; %s is written: resume with --resume_from_checkpoint latest",
                       signal.Signals(signum).name, r.step, path.name)  # fmt: skip
    raise SystemExit(faults.Preemption.exit_code(signum))


def _save_final(r: Run) -> None:
    """The trained weights, written to a temporary directory and moved into ``output_dir`` entry by entry."""
    _require_finite_weights(r, "the final model")
    tmp = checkpoint.temp_dir_beside(r.out / "final")
    r.recipe.save_weights(r.accelerator.unwrap_model(r.model), tmp)
    model_card.write(tmp / "README.md", r.cfg, r.recipe.model_card_info(), r.step, r.last_grid, r.out)
    for entry in tmp.iterdir():
        checkpoint.replace_dir(entry, r.out / entry.name) if entry.is_dir() else entry.replace(r.out / entry.name)
    tmp.rmdir()
    logger.info("saved trained weights to %s", r.out)


def _validate(r: Run) -> None:
    """Validation images (training/validation.py) from the live weights, or the EMA's swapped in; the encoders
    come back to the device for it when a cache had moved them off."""
    model = r.accelerator.unwrap_model(r.model)
    params = list(model.parameters())
    if r.cfg.caches:
        data_loader.move_encoders(r.recipe, r.accelerator.device)
    if r.ema is not None:
        r.ema.store(params)
        r.ema.copy_to(params)
    try:
        pipeline = r.recipe.validation_pipeline(model)
        rows = validation.render(pipeline, r.cfg, r.accelerator.device, r.accelerator.autocast)
        path = r.last_grid = validation.publish(rows, r.cfg, r.out, r.step, r.accelerator.trackers)
        logger.info("validation images: %s", path)
    finally:
        if r.ema is not None:
            r.ema.restore(params)
        if r.cfg.caches:
            data_loader.move_encoders(r.recipe, "cpu")
            r.device.empty_cache()
