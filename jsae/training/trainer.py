"""`Trainer` and `train`: the loop around the jitted step (SAELens's `SAETrainer.fit` semantics).

    sae = jsae.train({"architecture": "topk", "d_in": 768, "d_sae": 16384, "k": 32,
                      "training_tokens": 50_000_000}, activations)

    trainer = jsae.Trainer(config, activations)     # step-level control
    for _ in range(100):
        metrics = trainer.step()                    # device scalars; no host sync
    sae = trainer.fit()                             # the rest, checkpoints, output

One step: take a batch of `train_batch_size_tokens` rows from the source (split over the mesh's
"data" axis, or over hosts), scale it (`expected_average_only_in`), run the jitted step (state
donated), then, off the hot path, log every `wandb_log_frequency` steps, log and reset the
firing statistics every `feature_sampling_window` steps, checkpoint when due. A batch with NaN
or Inf stops the run with an error naming the step; the state is left as before that step and
no checkpoint is written after it.

At the end: the activation scale is folded into the weights, TopK decoder norms folded
(SAELens saves them so), and the SAE is written in SAELens format with its feature sparsity,
the training configuration and the metrics; `fit` returns that inference-form SAE.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from jsae.architectures import get_architecture
from jsae.architectures.base import TrainContext
from jsae.architectures.grad_layout import LAYOUTS, choose_layout, layout_cache_path
from jsae.errors import (
    ConfigError,
    FormatError,
    JsaeError,
    NonFiniteError,
    ShapeError,
    TrainingInterrupted,
)
from jsae.fsutil import atomic_output_dir
from jsae.io import CFG_FILENAME, WEIGHTS_FILENAME, log_feature_sparsity
from jsae.parallel import make_mesh
from jsae.sae import SAE
from jsae.training.checkpoint import Checkpointer
from jsae.training.config import ARCHITECTURE_SETTINGS, MODEL_SOURCES, TrainConfig
from jsae.training.monitor import ProgressBar, RunLogger
from jsae.training.optimizer import make_optimizer
from jsae.training.sources import Feeder, batch_problem, make_source
from jsae.training.state import TrainState, init_state, state_shardings
from jsae.training.step import make_step

Evaluator = Callable[[SAE, int], Mapping[str, float]]


def _preemption_sync_available() -> bool:
    """Whether jax.distributed runs JAX's preemption sync (it catches SIGTERM when it does)."""
    try:
        from jax._src import distributed  # no public accessor for the sync manager
    except ImportError:  # a JAX that moved it: Ctrl-C then acts as usual
        return False
    return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


class Trainer:
    """Trains one SAE on an activation source; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig | Mapping[str, Any] | str | Path,
        activations: Iterable[Any] | None = None,
        *,
        init: SAE | None = None,
        evaluator: Evaluator | None = None,
    ):
        self.config = TrainConfig.coerce(config)
        if activations is None:
            if self.config.data.activation_source == "cache":
                from jsae.activations.pipeline import with_cache_settings

                self.config = with_cache_settings(self.config)
            self.config = self.config.with_model_metadata()
        tr = self.config.training
        initialize_distributed(tr)
        self.mesh = _build_mesh(tr)
        data_axis = 1 if self.mesh is None else self.mesh.shape["data"]
        if tr.train_batch_size_tokens % data_axis:  # data=-1 resolved to the device count
            raise ConfigError(
                f"train_batch_size_tokens={tr.train_batch_size_tokens} cannot be split over "
                f"the mesh's data axis of {data_axis} devices; choose a batch divisible by "
                f"{data_axis}, or a data axis size that divides the batch."
            )
        self.settings = self.config.sae
        self.cfg = self.config.sae_config()
        self.arch = get_architecture(self.cfg.architecture)
        self.ctx = TrainContext(self.settings, self.mesh)
        self.optimizer = make_optimizer(tr)
        self.evaluator = evaluator
        self.batch_size = tr.train_batch_size_tokens
        self.local_rows = self.batch_size // jax.process_count()
        if self.batch_size % jax.process_count():
            raise ConfigError(
                f"train_batch_size_tokens={self.batch_size} must divide over "
                f"{jax.process_count()} processes."
            )
        self._check_output_path()
        if isinstance(activations, np.ndarray | jax.Array):
            if np.ndim(activations) != 2:
                raise ShapeError(
                    f"activations given as one array must be [N, d_in] rows, got shape "
                    f"{tuple(np.shape(activations))}; pass an iterable of [B, d_in] batches."
                )
            activations = [activations]  # the whole dataset, re-cut into batches
        if tr.from_pretrained_path is not None:
            if init is not None:
                raise ConfigError(
                    "both init= and from_pretrained_path give the starting SAE; pass one."
                )
            from jsae.hub import load  # the hub's readers: only when asked for

            init = load(tr.from_pretrained_path)
        self._builds_source = activations is None  # from the config's data settings
        source = (
            activations if activations is not None else make_source(self.config, self.local_rows)
        )
        self.feeder = Feeder(
            source,
            rows=self.local_rows,
            transcoder=self.settings.is_transcoder,
            widths=(self.cfg.d_in, self.settings.output_dim),
        )
        self.n_training_samples = 0
        self.scale: float | None = None  # expected_average_only_in factor
        self._scale_on_device: tuple[float | None, jax.Array] | None = None  # (scale, its array)
        self.state, self.shardings = self._initial_state(init)
        # A starting SAE acts on raw activations; with an estimated scale it is first put into
        # the scaled units the run trains in (the inverse of the fold at the end).
        self._init_in_raw_units = init is not None and self._scale_wanted()
        self._batch_sharding = self._make_batch_sharding()
        # The weight gradients' orientation: the config's, else the resumed checkpoint's, else
        # timed at the first step (`grad_layout`); the step is compiled once it is known.
        chosen = tr.weight_grad_layout
        self._grad_layout: str | None = None if chosen == "auto" else chosen
        self._step_fn: Callable[..., Any] | None = None
        resume_dir = tr.resume_from_checkpoint
        if resume_dir not in (None, "auto") and not Path(resume_dir).expanduser().is_dir():
            raise ConfigError(
                f"cannot resume from {resume_dir}: no such directory (resume_from_checkpoint, "
                "or checkpoint_path with --resume). Use --auto-resume to start a new run when "
                "there is no checkpoint yet."
            )
        self.checkpointer = (
            Checkpointer(tr.checkpoint_path, keep=tr.keep_checkpoints)
            if tr.checkpoint_path
            else None
        )
        self._thresholds = self._checkpoint_thresholds()
        self._pending: tuple[int, dict[str, jax.Array]] | None = None  # last step, unchecked
        self._last_checkpoint: int | None = None
        self._logs_from: int | None = None  # the step metrics.jsonl and wandb go on from
        self._source_ended = False  # fit() stopped early because the source ran out
        self._resumed_ended = False  # the resumed checkpoint is of such a run, at this length
        self._wandb_id: str | None = None  # the wandb run a resumed run goes on logging to
        self._resumed_dir: Path | None = None
        self.logger: RunLogger | None = None
        self._progress: ProgressBar | None = None
        self._tmp_metrics: Path | None = None
        self._finished = False
        self._interrupt_requested: str | bool = False  # the signal's name once one arrived
        self._forwarded_signal: str | None = None  # a Ctrl-C sent on as a preemption notice
        try:
            self._start(tr)
        except BaseException:
            self.close()
            raise

    def _start(self, tr: Any) -> None:
        """Resume when asked to, and refuse to write among another run's checkpoints."""
        resume_from = tr.resume_from_checkpoint
        if resume_from == "auto":  # a restarted job: continue if there is anything to continue
            has_one = self.checkpointer.latest_step() is not None
            resume_from = tr.checkpoint_path if has_one else None
            if not has_one and jax.process_index() == 0:
                print(
                    f"jsae: no checkpoint in {tr.checkpoint_path} yet; starting a new run.",
                    file=sys.stderr,
                )
        if resume_from is not None:
            self.resume(resume_from)
        self._refuse_another_runs_checkpoints()
        out = tr.output_path
        self._done_output: Path | None = None
        if tr.resume_from_checkpoint == "auto" and out and Path(out).exists():
            ended = self.steps_done >= self.total_steps or self._resumed_ended
            if not tr.overwrite_output and not ended:
                self._refuse_existing_output()
            if not tr.overwrite_output:
                self._done_output = Path(out)  # a restarted job whose run had finished

    # ------------------------------------------------------------------ construction helpers

    def _initial_state(self, init: SAE | None) -> tuple[TrainState, Any]:
        buffer_names = self.arch.buffer_names()
        if init is not None:
            same_shape = (init.cfg.d_in, init.cfg.d_sae) == (self.cfg.d_in, self.cfg.d_sae)
            start = same_shape and self.arch.from_inference(self.cfg, init.cfg, init.params)
            if not start:
                raise ConfigError(
                    f"the initial SAE ({init.cfg.architecture}, d_in={init.cfg.d_in}, "
                    f"d_sae={init.cfg.d_sae}) does not match the config ({self.cfg.architecture}, "
                    f"d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae})."
                )
            self._check_init_settings(init)
            fresh = jax.eval_shape(
                lambda: self.arch.train_init_params(self.cfg, self.settings, jax.random.key(0))
            )
            given = {k: jnp.asarray(v) for k, v in start.items()}
            for name, want in fresh.items():
                got = given.get(name)
                if got is None or got.shape != want.shape:
                    raise ConfigError(
                        f"the initial SAE's {name} has shape "
                        f"{None if got is None else tuple(got.shape)} but the config's SAE "
                        f"takes {tuple(want.shape)} (check d_in, d_sae and d_out)."
                    )
                given[name] = got.astype(want.dtype)  # the config's dtype (Adam state follows)
            params = {k: v for k, v in given.items() if k not in buffer_names}
            buffers = self.arch.init_buffers(self.cfg, self.settings)
            buffers.update({k: given[k].astype(jnp.float32) for k in buffer_names if k in given})

            def build(p):  # projected like every update (JumpReLU: thresholds >= 0)
                return init_state(
                    self.arch.project_params(self.cfg, self.ctx, p), buffers, self.optimizer
                )
        else:
            key = jax.random.key(self.config.training.seed)
            params = None
            buffers = self.arch.init_buffers(self.cfg, self.settings)

            def build(_):
                p = self.arch.train_init_params(self.cfg, self.settings, key)
                return init_state(p, buffers, self.optimizer)

        abstract = jax.eval_shape(build, params)
        if self.mesh is not None:
            shardings = state_shardings(abstract, self.mesh)
        else:
            one = SingleDeviceSharding(jax.local_devices()[0])
            shardings = jax.tree.map(lambda _: one, abstract)
        return jax.jit(build, out_shardings=shardings)(params), shardings

    def _check_init_settings(self, init: SAE) -> None:
        """Refuse a starting SAE whose input handling the config would change: the run would
        not start from the function it was given (a ConfigError naming each difference)."""
        got, want = init.cfg, self.cfg
        differ = []
        if got.apply_b_dec_to_input != want.apply_b_dec_to_input:
            differ.append(("apply_b_dec_to_input", got.apply_b_dec_to_input))
        scale_free = ("none", "expected_average_only_in")  # a dataset-wide scale is unfolded
        modes = (got.normalize_activations, want.normalize_activations)
        if modes[0] != modes[1] and not (modes[0] in scale_free and modes[1] in scale_free):
            differ.append(("normalize_activations", modes[0]))
        ranks_by_norm = want.architecture in ARCHITECTURE_SETTINGS["rescale_acts_by_decoder_norm"]
        if ranks_by_norm and got.rescale_acts_by_decoder_norm != want.rescale_acts_by_decoder_norm:
            norms = np.linalg.norm(np.asarray(init.params["W_dec"], np.float32), axis=-1)
            if not np.allclose(norms, 1.0, atol=1e-2):  # unit rows rank the same either way
                why = (
                    f"{got.rescale_acts_by_decoder_norm} (its decoder rows have norms "
                    f"{norms.min():.3g} to {norms.max():.3g}, not 1, so ranking by "
                    "pre-activation x decoder norm would pick other latents)"
                )
                differ.append(("rescale_acts_by_decoder_norm", why))
        if differ:
            listed = "; ".join(
                f"{k}: the SAE has {v}, the config {getattr(want, k)!r}" for k, v in differ
            )
            raise ConfigError(
                f"the initial SAE handles its input differently from the config ({listed}), so "
                "the run would not start from the SAE it was given; set these in the config as "
                "the SAE has them."
            )

    def _make_batch_sharding(self) -> Any:
        if self.mesh is None:
            return SingleDeviceSharding(jax.local_devices()[0])
        sharding = NamedSharding(self.mesh, P("data", None))
        if jax.process_count() > 1:
            spanned = {d.process_index for d in self.mesh.devices.flat}
            if len(spanned) < jax.process_count():
                raise ConfigError(
                    f"mesh {dict(self.mesh.shape)} takes {self.mesh.size} of the "
                    f"{jax.device_count()} devices, all of process(es) {sorted(spanned)}: on "
                    f"several processes the mesh must span every process's devices (data x "
                    f"model = {jax.device_count()}, e.g. mesh: {{data: {jax.process_count()}, "
                    f"model: {jax.local_device_count()}}}, or data: -1)."
                )
            # Each process feeds local_rows rows of its own: its devices must hold exactly that
            # many distinct rows of the global batch (not the whole batch, replicated).
            shape = (self.batch_size, self.cfg.d_in)
            starts = {
                index[0].start or 0
                for index in sharding.addressable_devices_indices_map(shape).values()
            }
            held = len(starts) * sharding.shard_shape(shape)[0]
            if held != self.local_rows:
                raise ConfigError(
                    f"mesh {dict(self.mesh.shape)} gives each of the {jax.process_count()} "
                    f"processes {held} rows of every {self.batch_size}-row batch, but each "
                    f"process feeds {self.local_rows}: the 'data' axis must split batches "
                    "over the processes (make 'data' a multiple of num_processes, e.g. "
                    f"mesh: {{data: {jax.process_count()}, model: {jax.local_device_count()}}})."
                )
        return sharding

    @property
    def grad_layout(self) -> str:
        """How the dense step forms its weight gradients (`jsae.architectures.grad_layout`):
        `weight_grad_layout` when set, else the resumed checkpoint's, else timed once on this
        machine at the step's shapes (process 0's choice on every process)."""
        if self._grad_layout is None:
            chosen = self._timed_grad_layout()
            if jax.process_count() > 1:  # one program on every process
                index = multihost_utils.broadcast_one_to_all(np.int32(LAYOUTS.index(chosen)))
                chosen = LAYOUTS[int(index)]
            self._grad_layout = chosen
        return self._grad_layout

    def _timed_grad_layout(self) -> str:
        """The fastest layout for one device's share of the batch (`choose_layout`)."""
        data, model = (1, 1)
        if self.mesh is not None:
            data, model = int(self.mesh.shape["data"]), int(self.mesh.shape["model"])
        if model > 1:  # latents split: the copies do not apply (TrainContext)
            return "direct"
        if not self.arch.forms_dense_weight_grads(self.cfg, self.ctx, self.batch_size):
            return "direct"  # nothing to orient (the TopK family's sparse paths)
        dtype = self.config.training.compute_dtype or self.cfg.dtype
        rows, d_out = self.batch_size // data, self.settings.output_dim
        choice = choose_layout(rows, self.cfg.d_in, d_out, self.cfg.d_sae, dtype)
        if choice.origin in ("measured", "machine") and jax.process_index() == 0:
            timed = ", ".join(
                f"{name} {seconds:.3f} s"
                for name, seconds in sorted(
                    (choice.times or {}).items(),
                    key=lambda t: LAYOUTS.index(t[0]) if t[0] in LAYOUTS else len(LAYOUTS),
                )
            )
            when = "timed now" if choice.origin == "measured" else "timed by an earlier run"
            cache = layout_cache_path()
            kept = f", kept in {cache}" if cache is not None else ""
            print(
                f"jsae: weight_grad_layout {choice.layout!r}, the fastest at this run's shapes "
                f"on this machine ({when}: {timed}{kept}); set weight_grad_layout to choose.",
                file=sys.stderr,
            )
        return choice.layout

    def compiled_step(self) -> Callable[..., Any]:
        """The jitted step `(state, x, y, scale) -> (state, metrics)`, the state donated."""
        if self._step_fn is None:
            tr = self.config.training
            self.ctx = TrainContext(self.settings, self.mesh, self.grad_layout)
            step_fn = make_step(self.cfg, self.arch, self.ctx, tr, self.optimizer)
            if self.mesh is not None:
                replicated = NamedSharding(self.mesh, P())
                self._step_fn = jax.jit(
                    step_fn,
                    in_shardings=(
                        self.shardings,
                        self._batch_sharding,
                        self._batch_sharding,
                        replicated,
                    ),
                    out_shardings=(self.shardings, replicated),
                    donate_argnums=0,
                )
            else:
                self._step_fn = jax.jit(step_fn, donate_argnums=0)
        return self._step_fn

    def _refuse_another_runs_checkpoints(self) -> None:
        """A run that does not resume from `checkpoint_path` must not write among another run's
        checkpoints: orbax would refuse a step that exists (after the work is done), and a later
        resume would pick whichever run's step is newest."""
        if self.checkpointer is None or self._resumed_dir == self.checkpointer.directory:
            return
        existing = self.checkpointer.steps()
        if existing:
            raise ConfigError(
                f"checkpoint_path {self.checkpointer.directory} already holds checkpoints of "
                f"another run (steps {existing}). Resume that run (resume_from_checkpoint, or "
                "jsae train --resume), or choose another checkpoint_path, or delete it."
            )

    def _check_output_path(self) -> None:
        """Refuse, before any work, an output_path the end of the run could not write, and a
        checkpoint_path that holds a saved SAE (its files would be replaced by the run's)."""
        tr = self.config.training
        if tr.checkpoint_path:
            ckpt = Path(tr.checkpoint_path).expanduser()
            saved_sae = any((ckpt / name).exists() for name in (CFG_FILENAME, WEIGHTS_FILENAME))
            if saved_sae and not (ckpt / "state").is_dir():
                raise ConfigError(
                    f"checkpoint_path {tr.checkpoint_path} holds a saved SAE (cfg.json, ...), "
                    "not checkpoints: the run would write its own training_config.yaml and "
                    "metrics.jsonl over that SAE's. Choose another checkpoint_path (to train "
                    "from that SAE, set from_pretrained_path to it)."
                )
        out = tr.output_path
        if not out:
            return
        target = Path(out).expanduser().absolute()
        for name, inside in (
            ("metrics_path", self.config.logging.metrics_path),
            ("wandb_dir", self.config.logging.wandb_dir),
        ):
            inside_path = Path(inside).expanduser().absolute() if inside else None
            if inside_path is not None and (inside_path == target or target in inside_path.parents):
                raise ConfigError(
                    f"{name} {inside} lies inside output_path {out}, which is written whole "
                    f"when training ends (and must not exist before): put {name} elsewhere "
                    "(the output gets its own copy of metrics.jsonl)."
                )
        existing = next(p for p in (target, *target.parents) if p.exists())
        if existing != target and not existing.is_dir():
            raise FileExistsError(
                f"output_path {out} lies under {existing}, which is a file; choose another "
                "output_path."
            )
        if tr.checkpoint_path:
            ckpt = Path(tr.checkpoint_path).expanduser().absolute()
            if target == ckpt or ckpt in target.parents or target in ckpt.parents:
                raise ConfigError(
                    f"output_path {out} and checkpoint_path {tr.checkpoint_path} overlap: "
                    "writing the output would replace (or land among) the checkpoints. Give "
                    "them separate directories."
                )
        if target.exists() and not target.is_dir():
            raise FileExistsError(
                f"output_path {out} is a file; the output is a directory. Choose another "
                "output_path."
            )
        # --auto-resume of a finished run finds its output: checked after resuming (_start)
        if target.exists() and not tr.overwrite_output and tr.resume_from_checkpoint != "auto":
            self._refuse_existing_output()

    def _refuse_existing_output(self) -> None:
        raise FileExistsError(
            f"output_path {self.config.training.output_path} already exists; choose another "
            "output_path or set overwrite_output (--overwrite) to replace it when training ends."
        )

    def _checkpoint_thresholds(self) -> list[int]:
        """SAELens's n_checkpoints thresholds, in training samples."""
        tr = self.config.training
        if tr.n_checkpoints <= 0:
            return []
        total = tr.total_steps * self.batch_size
        stride = math.ceil(total / (tr.n_checkpoints + 1))
        return list(range(0, total, stride))[1:]

    # ------------------------------------------------------------------ properties

    @property
    def steps_done(self) -> int:
        """Completed training steps (host-side count, no device sync)."""
        return self.n_training_samples // self.batch_size

    @property
    def total_steps(self) -> int:
        return self.config.training.total_steps

    @property
    def sae(self) -> SAE:
        """The SAE being trained, in its training form (unscaled, unfolded), on the host."""
        self._check_pending()
        params = _to_host({**self.state.params, **self.state.buffers})
        return SAE.from_params(self.cfg, params)

    # ------------------------------------------------------------------ stepping

    def _check_batch(self, array: Any, width: int, what: str, rows: int | None = None) -> None:
        problem = batch_problem(array, width, what, rows)
        if problem:
            raise ShapeError(f"step {self.steps_done}: the batch has {problem}.")

    def check_source(self) -> None:
        """Refuse a source whose activations do not fit the SAE, before anything is trained
        (the feeder checks every item it pulls; this pulls the first)."""
        self._naming_the_step(self.feeder.peek)

    def _device_batch(self, array: Any, width: int, what: str) -> jax.Array:
        self._check_batch(array, width, what, self.local_rows)
        if jax.process_count() > 1:
            return jax.make_array_from_process_local_data(self._batch_sharding, np.asarray(array))
        return jax.device_put(array, self._batch_sharding)

    def step(self, x: Any = None, y: Any = None) -> dict[str, jax.Array]:
        """Run one training step on `x` (and target `y` for transcoders), or on the next batch.

        Returns the step's metrics as device scalars. A non-finite batch or loss leaves the
        state as it was and raises NonFiniteError when the next step is about to run (or at
        `fit`'s end, or on checkpointing): the check waits for the previous step only, after the
        next batch is already prepared, so the device stays busy.

        With `normalize_activations="expected_average_only_in"` the first step estimates the
        scale first, as `fit` does: from the source's next `n_batches_for_norm_estimate`
        batches, or from `x` itself when a batch is given.
        """
        if self._scale_wanted():
            if x is None:
                self._set_scale(
                    self._estimate_scale(self.config.training.n_batches_for_norm_estimate)
                )
            else:  # a batch refused below must not set the scale
                self._check_batch(x, self.cfg.d_in, "input", self.local_rows)
                self._set_scale(_activation_scale(x, self.cfg.d_in))
        if x is None:
            try:
                x, y = self._next_batch()
            except StopIteration:
                raise StopIteration(
                    f"the activation source is exhausted after {self.steps_done} steps "
                    f"({self.n_training_samples} tokens)."
                ) from None
        elif y is None:
            if self.settings.is_transcoder:
                raise ConfigError(
                    "a transcoder's step needs its target batch too: trainer.step(x, y) with "
                    f"y of shape [{self.local_rows}, {self.settings.output_dim}]."
                )
            y = x
        xd = self._device_batch(x, self.cfg.d_in, "input")
        if self.settings.is_transcoder:
            yd = self._device_batch(y, self.settings.output_dim, "target")
        else:
            yd = xd
        scale = self._scale_array()
        self._check_pending()
        s = self.steps_done
        self.state, metrics = self.compiled_step()(self.state, xd, yd, scale)
        self.n_training_samples += self.batch_size
        self._pending = (s, metrics)
        return metrics

    def _scale_array(self) -> jax.Array:
        """The step's scale argument, placed once per value (not a transfer every step)."""
        if self._scale_on_device is None or self._scale_on_device[0] != self.scale:
            value = jnp.float32(1.0 if self.scale is None else self.scale)
            self._scale_on_device = (self.scale, value)
        return self._scale_on_device[1]

    def _next_batch(self) -> tuple[Any, Any]:
        """The source's next batch; a bad item's error names the step it was for."""
        return self._naming_the_step(self.feeder.next)

    def _naming_the_step(self, pull: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
        try:
            return pull()
        except ShapeError as exc:
            raise ShapeError(f"step {self.steps_done}: {exc}") from None
        except Exception as exc:  # the caller's source failed: keep its error, say where
            if not isinstance(exc, JsaeError):
                exc.add_note(
                    f"jsae: raised by the activation source at step {self.steps_done}; "
                    f"{self._last_checkpoint_words()}."
                )
            raise

    def _last_checkpoint_words(self, good: str = "") -> str:
        """'the last checkpoint is step N in DIR', for errors that stop a run."""
        if self.checkpointer is None or self._last_checkpoint is None:
            return "no checkpoint was written"
        step, directory = self._last_checkpoint, self.checkpointer.directory
        return f"the last {good}checkpoint is step {step} in {directory}"

    def _check_pending(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._raise_if_non_finite(*pending)

    def _raise_if_non_finite(self, step: int, metrics: dict[str, jax.Array]) -> None:
        if bool(metrics["finite"]):
            return
        self.n_training_samples = step * self.batch_size  # the state is that before `step`
        where = self._last_checkpoint_words("good ")
        if not bool(metrics["given_batch_finite"]):
            problem = "the activation batch contains NaN or Inf"
        elif not bool(metrics["batch_finite"]):
            dtype = self.config.training.compute_dtype or self.cfg.dtype
            problem = (
                f"the activation batch is finite but overflows {dtype} (largest finite value "
                f"{float(jnp.finfo(dtype).max):g}) once scaled and cast for the step; set "
                "compute_dtype to bfloat16 or float32, or normalise the activations "
                "(normalize_activations: expected_average_only_in)"
            )
        elif not bool(metrics["rows_normalisable"]):
            problem = (
                "the activation batch holds an all-zero row, which constant_norm_rescale cannot "
                "rescale (it divides each row by its norm); drop such rows from the source, or "
                "choose another normalize_activations"
            )
        elif not bool(metrics["loss_finite"]):
            problem = "the loss became NaN or Inf (training diverged; try a lower lr)"
        else:
            problem = (
                "the loss is finite but its gradients hold NaN or Inf (a loss term with an "
                "infinite derivative, or training diverged; try a lower lr)"
            )
        raise NonFiniteError(f"step {step}: {problem}; training stopped ({where}).")

    # ------------------------------------------------------------------ the loop

    def fit(self) -> SAE:
        """Train to `training_tokens`, checkpointing and logging; return the final SAE."""
        if self._finished:
            raise RuntimeError(
                f"this Trainer has finished its run ({self.steps_done} steps); build a new "
                "Trainer to train again (or resume its checkpoint with a larger training_tokens)."
            )
        if self._done_output is not None:
            if jax.process_index() == 0:
                print(
                    f"jsae: this run had already finished (step {self.steps_done} of "
                    f"{self.total_steps}); its SAE is in {self._done_output}.",
                    file=sys.stderr,
                )
            from jsae.io import load_saelens

            self._finished = True
            return load_saelens(self._done_output)
        if self.steps_done < self.total_steps:  # else only the output is left to write
            try:
                self.check_source()
            except StopIteration:
                raise ConfigError("the activation source is empty.") from None
        self._open_logs()
        try:
            with self._stop_on_interrupt():
                return self._fit()
        finally:
            self._close_logs()

    def _fit(self) -> SAE:
        """fit() inside its interrupt handler and log files."""
        tr, log = self.config.training, self.config.logging
        if self._scale_wanted():
            self._set_scale(self._estimate_scale(tr.n_batches_for_norm_estimate))
        # A step's metrics row is written after the next step is dispatched: reading them
        # waits for their step, which would otherwise idle the host while the device works.
        unlogged: tuple[int, dict[str, jax.Array], int] | None = None

        def write_unlogged() -> None:
            nonlocal unlogged
            if unlogged is not None:
                row, unlogged = unlogged, None
                self._log_step(*row)

        try:
            while self.steps_done < self.total_steps:
                s = self.steps_done
                if self._interrupt_requested or self._preempted(s):
                    write_unlogged()
                    self._stop_interrupted()
                if s > 0 and s % tr.feature_sampling_window == 0:
                    write_unlogged()
                    self._log_sparsity(s)
                try:
                    batch = self._next_batch()
                except StopIteration:
                    if self.steps_done == 0:
                        raise ConfigError(
                            "the activation source ended before one batch of "
                            f"train_batch_size_tokens={self.batch_size} rows (per process: "
                            f"{self.local_rows}); nothing was trained and nothing is saved."
                        ) from None
                    self._warn_exhausted()
                    self._source_ended = True
                    break
                metrics = self.step(*batch)
                self._progress.update(self.batch_size)
                write_unlogged()
                if (s + 1) % log.wandb_log_frequency == 0:
                    unlogged = (s, metrics, self.n_training_samples)
                if (s + 1) % (log.wandb_log_frequency * log.eval_every_n_wandb_logs) == 0:
                    write_unlogged()
                    self._log_evals(s)
                if self._checkpoint_due():
                    write_unlogged()  # rows up to the checkpoint are on disk before it is
                    self.save_checkpoint()
            self._check_pending()
        except NonFiniteError:
            write_unlogged()  # the failed step's row (NaN -> null) is kept, as before
            raise
        write_unlogged()
        s = self.steps_done
        if s > 0 and s % tr.feature_sampling_window == 0:
            self._log_sparsity(s)
        if self.checkpointer is not None and self._final_checkpoint_wanted():
            if self._last_checkpoint != s:
                self.save_checkpoint()
            elif self._source_ended:  # the source ended right after a checkpoint: say so
                self.checkpointer.update_host(s, source_ended_at=self.total_steps)
        sae = self.finish()
        self._finished = True
        return sae

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask a running fit() (in another thread) to stop after its current step, as Ctrl-C
        does: it checkpoints (when checkpointing) and raises `TrainingInterrupted`."""
        self._interrupt_requested = reason

    @contextlib.contextmanager
    def _stop_on_interrupt(self) -> Iterator[None]:
        """Ctrl-C (SIGINT) or SIGTERM (a scheduler's preemption notice) during fit() stops the
        run after the current step, with a checkpoint (when checkpointing) to resume from; a
        second signal stops at once. With several processes, both go through JAX's preemption
        sync (`_preempted`) so that every process stops after the same step."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers belong to the main thread
            return
        if jax.process_count() > 1:
            with self._forward_sigint_as_preemption():
                yield
            return
        watched = (signal.SIGINT, signal.SIGTERM)
        previous = {signum: signal.getsignal(signum) for signum in watched}

        def request_stop(signum: int, frame: Any) -> None:
            self._interrupt_requested = signal.Signals(signum).name
            for watched_signal, handler in previous.items():  # a second signal acts at once
                signal.signal(watched_signal, handler)
            save = ", checkpointing" if self.checkpointer is not None else ""
            print(
                f"\njsae: {signal.Signals(signum).name}; stopping after this step{save} (send it "
                "again to stop at once).",
                file=sys.stderr,
            )

        for signum in watched:
            signal.signal(signum, request_stop)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._interrupt_requested = False

    @contextlib.contextmanager
    def _forward_sigint_as_preemption(self) -> Iterator[None]:
        """Several processes: Ctrl-C becomes a preemption notice (a SIGTERM to this process,
        which JAX's notifier catches and shares), so all processes stop after one step. A
        process that stopped on its own would leave the others waiting in a collective."""
        if not _preemption_sync_available():
            yield  # without the sync, Ctrl-C acts as usual
            return
        previous = signal.getsignal(signal.SIGINT)

        def forward(signum: int, frame: Any) -> None:
            self._forwarded_signal = "SIGINT"
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C acts at once
            print(
                f"\njsae: SIGINT; all {jax.process_count()} processes stop after the same step"
                f"{', checkpointing' if self.checkpointer is not None else ''} (send it again "
                "to stop this process at once).",
                file=sys.stderr,
            )
            os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGINT, forward)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            self._forwarded_signal = None

    def _preempted(self, step: int) -> bool:
        """Several processes: whether a SIGTERM (a scheduler's preemption notice, or a Ctrl-C
        forwarded as one) reached any of them, answered at the same step on every process by
        JAX's preemption sync (which must be asked at every step), so all stop and checkpoint
        together."""
        if jax.process_count() == 1:
            return False
        try:
            if not multihost_utils.reached_preemption_sync_point(step):
                return False
        except RuntimeError:  # jax_enable_preemption_service turned off: SIGTERM acts as usual
            return False
        self._interrupt_requested = self._forwarded_signal or "SIGTERM"
        return True

    def _stop_interrupted(self) -> None:
        """Checkpoint the steps done so far and raise `TrainingInterrupted`; the request is
        served (a later fit() trains on, off the main thread too)."""
        self._check_pending()
        step, where = self.steps_done, "no checkpoint (checkpoint_path is None)"
        if self.checkpointer is not None:
            if self._last_checkpoint != step:
                self.save_checkpoint()
            where = f"checkpointed in {self.checkpointer.directory}; continue with --resume"
        reason, self._interrupt_requested = self._interrupt_requested, False
        raise TrainingInterrupted(f"training interrupted ({reason}) at step {step}: {where}.")

    def _warn_exhausted(self) -> None:
        warnings.warn(
            f"the activation source ended after {self.steps_done} steps "
            f"({self.n_training_samples} tokens) of the {self.total_steps} planned "
            f"(training_tokens={self.config.training.training_tokens}); saving the SAE trained "
            "so far.",
            stacklevel=4,
        )

    def _set_scale(self, scale: float) -> None:
        """Record the estimated activation scale. A starting SAE (`init`, which acts on raw
        activations) is unfolded into `scale * x` units first, so the run starts from the same
        function it was given and the fold at the end gives raw units again."""
        if self._init_in_raw_units and self.steps_done == 0:
            arch, cfg = self.arch, self.cfg

            def unfold(state: TrainState) -> TrainState:
                both = {**state.params, **state.buffers}
                _, p = arch.fold_activation_norm_scaling_factor(cfg, both, 1.0 / scale)
                return dataclasses.replace(
                    state,
                    params={k: p[k] for k in state.params},
                    buffers={k: p[k] for k in state.buffers},
                )

            self.state = jax.jit(unfold, out_shardings=self.shardings)(self.state)
        self._init_in_raw_units = False
        self.scale = scale

    def _scale_wanted(self) -> bool:
        """The activation scale is to be estimated (it is, once, before the first step)."""
        return self.cfg.normalize_activations == "expected_average_only_in" and self.scale is None

    def _estimate_scale(self, n_batches: int) -> float:
        """sqrt(d_in) / E||x|| over `n_batches` batches (consumed, as in SAELens)."""
        total, count, used = 0.0, 0, 0
        while used < n_batches:
            if self._interrupt_requested:
                raise TrainingInterrupted(
                    f"training interrupted ({self._interrupt_requested}) while estimating the "
                    f"activation scale, before step {self.steps_done + 1}: nothing was "
                    "checkpointed; run it again to start over."
                )
            try:
                x, _ = self._next_batch()  # checked by the feeder
            except StopIteration:
                break
            norms = np.linalg.norm(np.asarray(x, np.float32), axis=-1)
            total += float(norms.sum(dtype=np.float64))
            count += norms.size
            used += 1
        short = float(used < n_batches)
        if jax.process_count() > 1:  # every process decides alike
            from jax.experimental import multihost_utils

            sums = multihost_utils.process_allgather(np.array([total, count, short], np.float64))
            total, count, short = float(sums[:, 0].sum()), int(sums[:, 1].sum()), sums[:, 2].max()
        if count == 0 or total == 0:
            raise ConfigError(
                "cannot estimate the activation scale: the source gave no activations."
            )
        scale = _checked_scale(math.sqrt(self.cfg.d_in) / (total / count))  # finite first
        if short:
            raise ConfigError(
                f"the activation source ended after {used} of the n_batches_for_norm_estimate="
                f"{n_batches} batches that estimate the expected_average_only_in scale (they are "
                "used up, as in SAELens), leaving nothing to train on; lower "
                "n_batches_for_norm_estimate or give more activations."
            )
        return scale

    # ------------------------------------------------------------------ logging

    def _metrics_path(self) -> Path:
        logging, tr = self.config.logging, self.config.training
        if logging.metrics_path:
            return Path(logging.metrics_path)
        if tr.checkpoint_path:
            return Path(tr.checkpoint_path) / "metrics.jsonl"
        if self._tmp_metrics is None:  # kept until the output copies it; gone with the trainer
            directory = tempfile.mkdtemp(prefix="jsae-metrics-")
            weakref.finalize(self, shutil.rmtree, directory, True)
            self._tmp_metrics = Path(directory) / "metrics.jsonl"
        return self._tmp_metrics

    def _open_logs(self) -> None:
        if jax.process_index() == 0 and self.logger is None:
            path = self._metrics_path()
            earlier = self._resumed_dir / "metrics.jsonl" if self._resumed_dir else None
            if earlier is not None and earlier.is_file() and not path.exists():
                # resumed from another directory: its rows up to the step go on in this one
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(earlier, path)
            self.logger = RunLogger(
                self.config,
                path,
                resume_step=self._logs_from,
                wandb_id=self._wandb_id,
            )
            if self.checkpointer is not None:
                self.config.save_yaml(self.checkpointer.directory / "training_config.yaml")
        enabled = self.config.logging.progress_bar and jax.process_index() == 0
        self._progress = ProgressBar(
            self.total_steps * self.batch_size, self.n_training_samples, enabled
        )

    def _close_logs(self) -> None:
        if self._progress is not None:
            self._progress.close()
        if self.logger is not None:
            # a later fit() (after Ctrl-C) goes on in the same metrics file and wandb run
            self._logs_from, self._wandb_id = self.steps_done, self._current_wandb_id()
            self.logger.close()
            self.logger = None

    def _log_step(self, s: int, metrics: dict[str, jax.Array], n_samples: int) -> None:
        values = jax.device_get(metrics)
        row = {k: v for k, v in values.items() if "/" in k}
        row["details/n_training_samples"] = n_samples
        if self.logger is not None:
            self.logger.log(s, row)
        shown = ("losses/overall_loss", "losses/mse_loss", "metrics/l0")
        self._progress.describe(s + 1, {k: float(row[k]) for k in shown if k in row})

    def _log_sparsity(self, s: int) -> None:
        """SAELens's sparsity log at the end of a feature_sampling_window (before the reset)."""
        counts = _to_host(self.state.fire_counts)  # every process takes part
        log_sparsity, row = sparsity_summary(counts, self.window_tokens())
        if self.logger is not None:
            self.logger.log(s, row)
            self.logger.log_histograms(s, {"plots/feature_density_line_chart": log_sparsity})

    def _log_evals(self, s: int) -> None:
        # the metrics file takes no weight histograms: build them for wandb or an evaluator
        wanted = (self.logger is not None and self.logger.wandb is not None) or (
            self.evaluator is not None
        )
        if not wanted and jax.process_count() == 1:  # several: gathering the SAE is collective,
            return  # and process 0 (which logs) needs every process to take part
        sae = self.sae
        histograms = {"weights/W_dec_norms": np.linalg.norm(np.asarray(sae.W_dec), axis=1)}
        for name in ("b_enc", "b_gate", "b_mag", "threshold"):
            if name in sae.params:
                histograms[f"weights/{name}"] = np.asarray(sae.params[name])
        if self.logger is not None:
            self.logger.log_histograms(s, histograms)
        if self.evaluator is not None:
            results = self.evaluator(sae, s)
            if results is None:
                results = {}
            if not isinstance(results, Mapping):
                raise TypeError(
                    f"the evaluator must return a dict of metrics (or None), got "
                    f"{type(results).__name__}."
                )
            results = dict(results)
            if self.logger is not None and results:
                self.logger.log(s, results)

    def window_tokens(self) -> int:
        """Tokens counted by the current firing-statistics window."""
        s, window = self.steps_done, self.config.training.feature_sampling_window
        if s == 0:
            return 0
        return (s - ((s - 1) // window) * window) * self.batch_size

    def log_feature_sparsity(self) -> np.ndarray:
        """log10 of each latent's firing frequency over the current window. [d_sae]"""
        counts = _to_host(self.state.fire_counts)
        return log_feature_sparsity(counts, self.window_tokens())

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_due(self) -> bool:
        if self.checkpointer is None:
            return False
        due = False
        every = self.config.training.checkpoint_every_steps
        if every and self.steps_done % every == 0:
            due = True
        while self._thresholds and self.n_training_samples > self._thresholds[0]:
            self._thresholds.pop(0)
            due = True
        return due

    def _final_checkpoint_wanted(self) -> bool:
        tr = self.config.training
        if tr.n_checkpoints or tr.checkpoint_every_steps or tr.save_final_checkpoint:
            return True
        # A run that checkpointed anyway (on an interrupt, or resumed from its checkpoint_path)
        # ends with one too: else its newest checkpoint is an earlier step, and --auto-resume
        # of the finished run would resume from it and refuse the existing output.
        return self._last_checkpoint is not None

    def save_checkpoint(self) -> int:
        """Checkpoint the current state (after checking the last step was finite)."""
        if self.checkpointer is None:
            raise ConfigError("checkpoint_path is None: checkpoints are disabled.")
        self._check_pending()
        step = self.steps_done
        if self._last_checkpoint == step:
            return step  # already saved (e.g. fit's final checkpoint)
        position, arrays = self.feeder.position()
        settings = self.config.to_dict()
        host = {
            "step": step,
            "n_training_samples": self.n_training_samples,
            "scale": self.scale,
            "feeder": position,
            "sae": settings["sae"],
            "seed": self.config.training.seed,  # with `data`: the activations a resume reads
            "data": settings["data"],
            "weight_grad_layout": self.grad_layout,
            "train_batch_size_tokens": self.batch_size,
            "wandb_id": self._current_wandb_id(),
            "init_in_raw_units": self._init_in_raw_units,  # a fine-tune checkpointed at step 0
            # the run ended here, its source used up before total_steps: a restarted job of the
            # same length returns its output instead of training on
            "source_ended_at": self.total_steps if self._source_ended else None,
        }
        portable = self.feeder.position_is_global()
        if jax.process_index() == 0:  # what `jsae.load(checkpoint_path)` and a resume read
            self.config.save_yaml(self.checkpointer.directory / "training_config.yaml")
        self.checkpointer.save(step, self.state, host, arrays, portable=portable)
        self._last_checkpoint = step
        return step

    def _current_wandb_id(self) -> str | None:
        """The wandb run this run logs to (None without wandb), kept in checkpoints."""
        run = self.logger.wandb if self.logger is not None else None
        return run.id if run is not None else self._wandb_id

    def resume(self, directory: str | Path, *, source: bool = True) -> int:
        """Restore the newest checkpoint under `directory`; returns its step. `source=False`
        restores the SAE's training state only (to read it, not to continue the run)."""
        own = self.checkpointer is not None and (
            self.checkpointer.directory == Path(directory).expanduser().absolute()
        )
        checkpointer = self.checkpointer if own else Checkpointer(directory, read_only=True)
        unreadable: dict[int, str] = {}  # step -> why
        gone: set[int] = set()  # deleted while being read: the writing run's retention
        try:
            while True:
                if not own:  # another run may be training there: see its newest steps
                    checkpointer.manager.reload()
                step = self._newest_untried(checkpointer, {*unreadable, *gone})
                if step is None:
                    break
                try:
                    resumed = self._resume_from(checkpointer, directory, source, step)
                except _UnreadableCheckpoint as exc:
                    if not own:  # orbax's manager fails every later restore after a failed one
                        checkpointer.close()
                        checkpointer = Checkpointer(directory, read_only=True)
                        if jax.process_count() == 1 and step not in checkpointer.steps():
                            gone.add(step)  # not damaged: the writer's retention replaced it
                            continue
                    unreadable[step] = f"{type(exc.__cause__).__name__}: {exc.__cause__}"[:300]
                    if jax.process_count() > 1:  # every process must choose the same step
                        break
                    continue
                if unreadable:
                    warnings.warn(
                        f"checkpoint(s) {sorted(unreadable)} in {directory} could not be read "
                        f"({'; '.join(f'{s}: {why}' for s, why in unreadable.items())}); resumed "
                        f"from step {resumed}, the newest readable one.",
                        stacklevel=2,
                    )
                    if own:  # the run will write those steps again
                        for bad in unreadable:
                            checkpointer.delete(bad)
                return resumed
        finally:
            if not own:  # read from only: release its threads
                checkpointer.close()
        if unreadable:
            raise FormatError(
                f"no readable checkpoint in {directory}: "
                + "; ".join(f"step {s}: {why}" for s, why in unreadable.items())
                + ". Delete the damaged step directories (state/<step>) to start over."
            )
        raise ConfigError(f"no checkpoint to resume from in {directory}.")

    @staticmethod
    def _newest_untried(checkpointer: Checkpointer, tried: Collection[int]) -> int | None:
        """The newest step not in `tried` (with several processes, process 0's newest)."""
        if jax.process_count() > 1:
            step = checkpointer.latest_step()
            return None if step is None or step in tried else step
        return max((s for s in checkpointer.steps() if s not in tried), default=None)

    def _resume_from(
        self, checkpointer: Checkpointer, directory: str | Path, source: bool, step: int
    ) -> int:
        try:
            host, arrays = checkpointer.read_host(step, source_position=source)
        except ConfigError:
            raise
        except Exception as exc:  # a truncated or missing host file
            raise _UnreadableCheckpoint from exc
        self._check_resumable(directory, step, host)
        saved_sae = host.get("sae")
        current = self.config.to_dict()["sae"]
        speed_only = ("use_sparse_activations",)  # the same losses either way
        saved_sae = saved_sae or current
        if self.settings.is_transcoder:  # d_out unset means d_in: the same SAE either way
            saved_sae = {**saved_sae, "d_out": saved_sae.get("d_out") or saved_sae.get("d_in")}
            current = {**current, "d_out": self.cfg.output_dim}
        diff = sorted(k for k in current if k not in speed_only and saved_sae.get(k) != current[k])
        if "metadata" in diff:  # name the entries (hook_name, model_name, ...)
            saved_meta, meta = saved_sae.get("metadata") or {}, current["metadata"] or {}
            changed = [k for k in sorted({*saved_meta, *meta}) if saved_meta.get(k) != meta.get(k)]
            diff = sorted({*diff} - {"metadata"} | {f"metadata.{k}" for k in changed})
        if diff:
            raise ConfigError(
                f"cannot resume from {directory}: the SAE settings differ from the "
                f"checkpoint's in {diff}."
            )
        self._check_same_activations(directory, host)
        abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            self.state,
            self.shardings,
        )
        try:
            self.state = checkpointer.restore_state(step, abstract)
        except Exception as exc:  # damaged or deleted (another run's retention) step files
            raise _UnreadableCheckpoint from exc
        saved_layout = host.get("weight_grad_layout")  # the layout the run was computed in
        if self.config.training.weight_grad_layout == "auto" and saved_layout in LAYOUTS:
            self._grad_layout, self._step_fn = saved_layout, None  # rounds as before the stop
        self.n_training_samples = int(host["n_training_samples"])
        self._resumed_ended = host.get("source_ended_at") == self.total_steps
        self.scale = host["scale"]
        # the checkpoint's weights are in the run's units, unless a fine-tune was checkpointed
        # before its scale was estimated (the unfold is still to come)
        self._init_in_raw_units = bool(host.get("init_in_raw_units", False))
        if not source:
            return step
        how = self.feeder.restore(host["feeder"], arrays)
        written_by = int(host.get("process_count", 1))
        if written_by != jax.process_count():
            how += f"; written by {written_by} process(es), continued on {jax.process_count()}"
        self._thresholds = [
            t for t in self._checkpoint_thresholds() if t >= self.n_training_samples
        ]
        same_directory = (
            self.checkpointer is not None and self.checkpointer.directory == checkpointer.directory
        )
        self._last_checkpoint = step if same_directory else None  # else it is not in ours
        self._logs_from = step
        self._resumed_dir = checkpointer.directory
        self._wandb_id = host.get("wandb_id")  # the same wandb run goes on (None: a new one)
        self._pending = None
        if jax.process_index() == 0:
            print(f"jsae: resumed from step {step} in {directory} ({how}).", file=sys.stderr)
        return step

    def _check_same_activations(self, directory: str | Path, host: dict[str, Any]) -> None:
        """A resume reads the activations the run started on: a changed seed or synthetic
        source setting would build another dataset (refused); other changed data settings (a
        moved activations_path) are allowed with a warning naming them."""
        saved_data, data = host.get("data"), self.config.to_dict()["data"]
        if saved_data is None or not self._builds_source:  # an earlier jsae's; given activations
            return
        seed = self.config.training.seed
        changed = sorted(k for k in data if saved_data.get(k, data[k]) != data[k])
        synthetic = data["activation_source"] == "synthetic"
        fixed = [
            k
            for k in changed
            if k == "activation_source" or (synthetic and k.startswith("synthetic_"))
        ]
        if host.get("seed", seed) != seed:
            fixed.insert(0, "seed")
        if fixed:
            raise ConfigError(
                f"cannot resume from {directory}: {fixed} differ from the checkpoint's, so "
                "the run would go on with other activations than it started on. Resume with "
                "the checkpoint's values (its training_config.yaml) or start a new run."
            )
        if changed:
            warnings.warn(
                f"resuming from {directory} with data settings that differ from the "
                f"checkpoint's: {changed} (e.g. moved files); the source must give the same "
                "activations in the same order for the run to go on as it started.",
                stacklevel=3,
            )

    def _check_resumable(self, directory: str | Path, step: int, host: dict[str, Any]) -> None:
        """The run's step counter is tokens seen / batch size: a checkpoint written with
        another batch size, or past this config's training_tokens, cannot continue it."""
        seen = int(host["n_training_samples"])
        saved_batch = int(host.get("train_batch_size_tokens") or self.batch_size)
        if saved_batch != self.batch_size or seen % self.batch_size:
            raise ConfigError(
                f"cannot resume from {directory}: its run trained with train_batch_size_tokens="
                f"{saved_batch if saved_batch != self.batch_size else 'another value'} (step "
                f"{step}, {seen} tokens), this config has {self.batch_size}; the steps, schedules "
                "and checkpoints count batches, so resume with the run's batch size."
            )
        planned, tokens = self.total_steps * self.batch_size, self.config.training.training_tokens
        if seen > planned:
            raise ConfigError(
                f"cannot resume from {directory}: its checkpoint is at step {step} ({seen} "
                f"tokens), past this config's training_tokens={tokens} ({self.total_steps} "
                "steps); raise training_tokens to train further."
            )

    # ------------------------------------------------------------------ the result

    def final_sae(self) -> SAE:
        """The trained SAE in inference form: scale folded, TopK decoder norms folded."""
        self._check_pending()
        host = _to_host({**self.state.params, **self.state.buffers})
        cfg = self.cfg
        if self.scale is not None:
            cfg, host = self.arch.fold_activation_norm_scaling_factor(cfg, host, self.scale)
        sae = SAE.from_params(cfg, host)
        if cfg.architecture == "topk" and cfg.rescale_acts_by_decoder_norm:
            sae = sae.fold_W_dec_norm()
        counts = np.asarray(_to_host(self.state.fire_counts), np.float64)
        tokens = max(self.window_tokens(), 1)
        since = np.asarray(_to_host(self.state.since_fired))
        meta = sae.cfg.metadata.replace(
            l0=float(counts.sum() / tokens),
            num_dead_features=int(np.sum(since > self.config.training.dead_feature_window)),
        )
        sae = SAE(sae.cfg.replace(metadata=meta), sae.params)
        return sae.to_inference()

    def close(self) -> None:
        """Release the checkpoint manager's threads (also done at interpreter exit)."""
        if getattr(self, "checkpointer", None) is not None:
            self.checkpointer.close()

    def finish(self) -> SAE:
        """Build the final SAE and write `output_path` (SAELens format + sparsity + config)."""
        sae = self.final_sae()
        out = self.config.training.output_path
        if out:
            # Every process gathers the statistics (a collective); process 0 alone writes.
            log_sparsity = self.log_feature_sparsity() if self.steps_done else None
            if jax.process_index() == 0:
                self._write_output(sae, Path(out), log_sparsity)
        return sae

    def _write_output(self, sae: SAE, out: Path, log_sparsity: np.ndarray | None) -> None:
        from jsae.io import save

        with atomic_output_dir(out, overwrite=self.config.training.overwrite_output) as tmp:
            save(sae, tmp, log_sparsity=log_sparsity, overwrite=True)
            (tmp / "training_config.yaml").write_text(self.config.to_yaml())
            (tmp / "training_config.json").write_text(
                json.dumps(self.config.to_dict(flat=True), indent=2)
            )
            metrics = self._metrics_path()
            if metrics.exists():
                shutil.copyfile(metrics, tmp / "metrics.jsonl")
        if self.logger is not None and self.config.logging.log_weights_to_wandb:
            try:  # the SAE is saved: an upload problem must not fail the finished run
                self.logger.log_artifact(out, f"sae-{self.config.run_name}")
            except Exception as exc:  # wandb raises many kinds
                warnings.warn(
                    f"could not log the SAE to wandb as an artifact ({exc}); it is saved in {out}.",
                    stacklevel=2,
                )


def is_checkpoint_dir(path: str | Path) -> bool:
    """Whether `path` is a jsae training run's checkpoint directory."""
    path = Path(path)
    return (path / "training_config.yaml").is_file() and (path / "state").is_dir()


def load_checkpoint(directory: str | Path) -> SAE:
    """The SAE at the newest checkpoint of a training run, in inference form (activation
    scale and TopK decoder norms folded, BatchTopK as JumpReLU), as the run would have saved
    it had it ended there. Reads on one device, whatever mesh or processes wrote it."""
    directory = Path(directory).expanduser()
    if not is_checkpoint_dir(directory):
        raise ConfigError(
            f"{directory} is not a jsae checkpoint directory (it needs training_config.yaml "
            "and state/)."
        )
    config = TrainConfig.from_yaml(directory / "training_config.yaml").replace(
        mesh=None,
        coordinator_address=None,
        num_processes=None,
        process_id=None,
        checkpoint_path=None,
        resume_from_checkpoint=None,
        n_checkpoints=0,
        checkpoint_every_steps=None,
        save_final_checkpoint=False,
        keep_checkpoints=None,
        output_path=None,
        log_to_wandb=False,
        progress_bar=False,
        from_pretrained_path=None,
    )
    trainer = Trainer(config, [])
    trainer.resume(directory, source=False)
    return trainer.final_sae()


def train(
    config: TrainConfig | Mapping[str, Any] | str | Path,
    activations: Iterable[Any] | None = None,
    *,
    init: SAE | None = None,
    evaluator: Evaluator | None = None,
) -> SAE:
    """Train an SAE on `activations` (any iterable of [B, d_in] arrays) and return it.

    `config`: a `TrainConfig`, a flat or nested dict of SAELens field names, or a YAML path.
    Without `activations`, the configured `activation_source` is built; a language model
    (`model_name`) or its `jsae cache` runs what `jsae train` runs: the SAE's metadata names the
    model and hook, training evaluates it spliced into the model, and the final evals are written
    next to it as `eval_results.json`. `init` starts from an existing SAE (fine-tuning). Returns
    the SAE in inference form (what `output_path` holds).
    """
    config = TrainConfig.coerce(config)
    if activations is None and evaluator is None and config.data.activation_source in MODEL_SOURCES:
        from jsae.activations.pipeline import train_language_model_sae

        return train_language_model_sae(config, init=init, log=None)[0]
    trainer = Trainer(config, activations, init=init, evaluator=evaluator)
    try:
        return trainer.fit()
    finally:
        trainer.close()


# ---------------------------------------------------------------------------------- helpers


class _UnreadableCheckpoint(Exception):
    """A checkpoint step whose files cannot be read (the cause says why): try an older one."""


def _build_mesh(training: Any) -> Any:
    if training.mesh is None and jax.process_count() == 1:
        return None
    data, model = training.mesh_shape if training.mesh is not None else (-1, 1)
    return make_mesh(data, model)


def initialize_distributed(training: Any) -> None:
    """jax.distributed.initialize from the config's training settings (once per process);
    must come before anything starts JAX's backend (loading a model, jax.process_count())."""
    if training.coordinator_address is None:
        return
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(
        coordinator_address=training.coordinator_address,
        num_processes=training.num_processes,
        process_id=training.process_id,
    )


def sparsity_summary(counts: Any, tokens: int) -> tuple[np.ndarray, dict[str, float]]:
    """(log10 firing frequencies [d_sae], SAELens's sparsity metrics) of one sampling window.

    The below-threshold counts compare the frequencies themselves, as SAELens does; recovered
    from the float32 log, a frequency of exactly 1e-5 would land just below it.
    """
    log_sparsity = log_feature_sparsity(counts, tokens)
    freq = np.asarray(counts, np.float64) / max(tokens, 1)  # [d_sae]
    return log_sparsity, {
        "metrics/mean_log10_feature_sparsity": float(np.mean(log_sparsity)),
        "sparsity/below_1e-5": int(np.sum(freq < 1e-5)),
        "sparsity/below_1e-6": int(np.sum(freq < 1e-6)),
    }


def _activation_scale(x: Any, d_in: int) -> float:
    """sqrt(d_in) / mean row norm of one batch (a step given its batch, not the source)."""
    norms = np.linalg.norm(np.asarray(x, np.float32), axis=-1)
    mean = float(norms.mean(dtype=np.float64)) if norms.size else 0.0
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        mean = float(np.mean(multihost_utils.process_allgather(np.float64(mean))))
    if mean == 0:
        raise ConfigError("cannot estimate the activation scale: the batch is all zeros.")
    return _checked_scale(math.sqrt(d_in) / mean)


def _checked_scale(scale: float) -> float:
    if not (math.isfinite(scale) and scale > 0):  # NaN, or Inf norms giving 0
        raise NonFiniteError(
            "step 0: the batches that estimate the activation scale (expected_average_only_in) "
            "contain NaN or Inf; training stopped before the first step."
        )
    return scale


def _to_host(tree: Any) -> Any:
    """numpy copies of (possibly sharded, possibly multi-host) arrays."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, jax.device_get(tree))


__all__ = ["Trainer", "is_checkpoint_dir", "load_checkpoint", "train"]
