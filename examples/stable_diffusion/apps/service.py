"""Running requests on one model folder: the one road from the command lines, the page and the server to the pipelines.

A :class:`Service` knows which tasks its folder runs (and why not the others), loads the pipeline
each task runs (the SDXL ones for an SDXL folder; one set of sessions per folder, shared by its
tasks), reads each task's :class:`.requests.ModelFacts` from the model, and runs checked
:class:`.requests.Request`\\ s:

- Requests that may share a pipeline call do: text-to-image requests of the same size, steps,
  scheduler, guidance (and, for SDXL, with or without a negative prompt) run as one UNet batch.
  Each keeps its picture: its initial latents are drawn from its own seed's generator exactly as
  a single run draws them. Image-to-image and inpainting requests, and schedulers that draw step
  noise, run alone: their pipelines draw the VAE sample, the noise and the step noise from the
  call's one generator, and in a shared call every request after the first would draw from
  another's stream. One call makes at most the pixels the memory allows.
- A call that fails is retried request by request, so one request's failure is its own.
- A run stops at the end of a step once every caller of the call has gone, or the time a request
  may take (``max_seconds``) has passed: :class:`.errors.CallerGoneError`, :class:`.errors.RunTimeoutError`.

Calls from several threads are served one at a time (a pipeline's scheduler is set per call):
a run that a page stopped waiting for still holds the pipelines until its next step ends.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

import ortbind

from ..build.cache import DigitsKind, ensure_digits_model
from ..pipelines import (
    ModelFolder,
    OrtPipelineBase,
    Scheduler,
    Task,
    cpu_session_options,
    draws_step_noise,
    load_scheduler,
    pipeline_for_model,
)
from .errors import AppError, CallerGoneError, ModelFailedError, RequestError, RunTimeoutError
from .requests import MODEL_SCHEDULER, TASKS, Limits, ModelFacts, Request, parse

__all__ = ["TASK_MODELS", "Result", "Service", "TaskModel", "add_model_options", "seeded_generator"]

# Bytes a pipeline call takes per output pixel and per channel of the VAE's full-resolution
# blocks: the decoder's activations dominate. Measured on the tiny random-weight model (32 channels): about 7;
# 20 leaves room for the UNet's attention, the images and the allocator.
_BYTES_PER_PIXEL_CHANNEL = 20 * 4
# A VAE whose config is not in the folder: SD's and SDXL's have 128 channels at full resolution.
_DEFAULT_VAE_CHANNELS = 128


@dataclass(frozen=True)
class TaskModel:
    """Which model a task runs.

    Attributes:
        pipeline_task: What :func:`.pipelines.pipeline_for_model` calls the task.
        builtin: The built-in digits model it runs without a model folder (inpainting has its own).
        needs: Components it needs besides the text-to-image ones.
    """

    pipeline_task: Task
    builtin: DigitsKind
    needs: tuple[str, ...] = ()


TASK_MODELS: dict[str, TaskModel] = {
    "txt2img": TaskModel("text-to-image", "digits"),
    "img2img": TaskModel("image-to-image", "digits", ("vae_encoder",)),
    "inpaint": TaskModel("inpainting", "digits-inpaint", ("vae_encoder",)),
}
"""Task name (a key of :data:`.requests.TASKS`) -> the model it runs."""


@dataclass
class Result:
    """One request's pictures and how its call went.

    Attributes:
        images: The request's images (``batch`` of them).
        batch_size: How many requests shared the pipeline call.
        pipeline: The pipeline class that ran it.
        scheduler: The scheduler class that ran it.
        seconds: Wall time of the call.
        seconds_per_step: Wall time of the denoising loop per step.
        ort_seconds: Time inside ONNX Runtime.
    """

    images: list[Image.Image]
    batch_size: int
    pipeline: str
    scheduler: str
    seconds: float
    seconds_per_step: float
    ort_seconds: float


Outcome = Result | AppError
"""What :meth:`Service.run` gives each request: its pictures, or why it has none."""


def add_model_options(parser: argparse.ArgumentParser, *, device: str | None = "cpu", device_help: str = "") -> None:
    """The options every command takes to say which model runs where: ``--model``, ``--cache-dir``, ``--device``."""
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="ONNX model folder (default: the built-in digits model, trained on scikit-learn's handwritten digits: "
        "it draws the digit the prompt names, 32x32)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="where the built-in model is exported to ONNX on first use"
    )
    parser.add_argument("--device", default=device, help=device_help or "cpu, cuda or cuda:N")


def seeded_generator(seed: int) -> torch.Generator:
    """The generator a request's seed stands for: a CPU one, so a seed draws the same latents on any device."""
    return torch.Generator("cpu").manual_seed(seed)


class _Stop(Exception):  # noqa: N818  (a signal out of the loop, not an error)
    """Raised from the step callback to leave the denoising loop."""


class Service:
    """The pipelines of one model folder on one device, and the one way every surface runs a request.

    Args:
        model_dir: An ONNX Stable Diffusion folder; ``None`` for the built-in digits model (its
            text-to-image folder and its inpainting one, exported to ONNX on first use).
        device: Where the models run: ``cpu``, ``cuda`` or ``cuda:N``.
        cache_dir: Where the built-in model is exported; see :func:`.build.cache.ensure_digits_model`.
        limits: What a request may ask for.
        cuda_graph: Capture the UNet step as a CUDA graph (CUDA only).
        memory_share: The share of the memory free at load time that one call may take.
        memory_bytes: The memory one call may take, instead of ``memory_share`` of what is free.
        max_seconds: The longest a request may take (from when it reached :meth:`run`); ``None``: no bound.
        clock: Seconds, for the time bound (``time.monotonic``).
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        device: str = "cpu",
        *,
        cache_dir: str | Path | None = None,
        limits: Limits | None = None,
        cuda_graph: bool = False,
        memory_share: float = 0.5,
        memory_bytes: int | None = None,
        max_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.builtin = model_dir is None
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.device = device
        self.cache_dir = cache_dir
        self.limits = limits or Limits()
        self.cuda_graph = cuda_graph
        self.memory_share = memory_share
        self.memory_bytes = memory_bytes
        self.max_seconds = max_seconds
        self.clock = clock
        self._sessions: dict[Path, dict[str, ortbind.TorchSession]] = {}
        self._pipelines: dict[str, OrtPipelineBase] = {}
        self._facts: dict[str, ModelFacts] = {}
        self._noisy: dict[tuple[str, str], bool] = {}
        self._running = threading.Lock()

    # ------------------------------------------------------------------ what the folder runs

    def folder(self, task: str) -> Path:
        """The folder ``task`` runs: the given one, or the built-in digits model's (exported on first use)."""
        if self.model_dir is not None:
            return self.model_dir
        return ensure_digits_model(self.cache_dir, kind=TASK_MODELS[task].builtin)

    def unavailable(self, task: str) -> str | None:
        """``None`` if the folder runs ``task``, else why not (the built-in model runs every task)."""
        if self.model_dir is None:
            return None
        spec = TASK_MODELS[task]
        try:
            pipeline_for_model(self.model_dir, spec.pipeline_task)
        except (ValueError, FileNotFoundError) as exc:
            return str(exc)
        folder = ModelFolder(self.model_dir)
        missing = [name for name in spec.needs if not folder.has_model(name)]
        if missing:
            return f"{self.model_dir}: {task} needs {', '.join(f'{m}/' for m in missing)}, which the folder lacks"
        return None

    def tasks(self) -> list[str]:
        """The tasks the folder runs, in the order of :data:`.requests.TASKS`."""
        return [task for task in TASKS if self.unavailable(task) is None]

    def pipeline(self, task: str) -> OrtPipelineBase:
        """The pipeline ``task`` runs on this folder, loaded on first use; the folder's tasks share its sessions.

        Raises:
            ValueError: The folder does not run ``task`` (the message says why), or its models fail to load.
            FileNotFoundError: The folder lacks a part the pipeline needs.
        """
        pipe = self._pipelines.get(task)
        if pipe is not None:
            return pipe
        reason = self.unavailable(task)
        if reason is not None:
            raise ValueError(reason)
        path = self.folder(task)
        folder = ModelFolder(path)
        cls = pipeline_for_model(path, TASK_MODELS[task].pipeline_task)
        names = cls.session_names(folder)
        folder.require([*names, "scheduler"], cls.__name__)
        loaded = self._sessions.setdefault(path, {})
        for name in names:
            if name not in loaded:
                loaded[name] = folder.session(name, self.device, **self._session_kwargs(name))
        pipe = self._pipelines[task] = cls.from_sessions(folder, loaded)
        return pipe

    def _session_kwargs(self, name: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if torch.device(self.device).type == "cpu":
            # Calls come in every size: the memory of a large one goes back when it ends.
            kwargs["session_options"] = cpu_session_options(memory_arena=False)
        if self.cuda_graph and name == "unet":
            kwargs["cuda_graph"] = True
        return kwargs

    def facts(self, task: str) -> ModelFacts:
        """``task``'s defaults and limits on this folder, read from its model (loaded on first use)."""
        facts = self._facts.get(task)
        if facts is None:
            pipe = self.pipeline(task)
            default = pipe.default_size
            max_pixels = (2 * default) ** 2
            vae = ModelFolder(self.folder(task)).config("vae_decoder") or {}
            blocks = vae.get("block_out_channels")
            channels = int(blocks[0]) if isinstance(blocks, list) and blocks else _DEFAULT_VAE_CHANNELS
            per_pixel = _BYTES_PER_PIXEL_CHANNEL * channels
            budget = self.memory_bytes or int(self.memory_share * available_memory(pipe.device))
            facts = self._facts[task] = ModelFacts(
                default_size=default,
                size_multiple=pipe.size_multiple,
                max_pixels=max_pixels,
                max_call_pixels=max(0, min(budget // per_pixel, self.limits.max_batch * max_pixels)),
                memory_note=f"{_size(budget)} for a call, about {per_pixel} bytes a pixel",
                limits=self.limits,
            )
        return facts

    def parse(self, task: str, values: Mapping[str, object], *, server: bool = False) -> Request:
        """:func:`.requests.parse` with this folder's facts for ``task``.

        Raises:
            RequestError: As :func:`.requests.parse`; also for a task the folder does not run.
        """
        reason = self.unavailable(task) if task in TASKS else f"no such task; the tasks are {', '.join(TASKS)}"
        if reason is not None:
            raise RequestError("task", reason, status=404)
        return parse(task, values, self.facts(task), server=server)

    # ------------------------------------------------------------------ running

    def generate(self, request: Request, *, progress: bool = False) -> Result:
        """Run one request; its result, or the :class:`.errors.AppError` it ends with, raised."""
        (outcome,) = self.run([request], progress=progress)
        if isinstance(outcome, AppError):
            raise outcome
        return outcome

    def run(
        self,
        requests: Sequence[Request],
        *,
        gone: Sequence[Callable[[], bool]] | None = None,
        started: Sequence[float] | None = None,
        progress: bool = False,
    ) -> list[Outcome]:
        """Run checked requests, sharing pipeline calls where the pictures stay each request's own.

        Args:
            requests: From :meth:`parse`, for tasks this folder runs.
            gone: Per request, whether its caller has left (a run whose callers all left stops).
            started: Per request, when it arrived (:attr:`clock` time; default: now), for ``max_seconds``.
            progress: Show the pipelines' progress bars (the page follows them).

        Returns:
            Each request's :class:`Result` or :class:`.errors.AppError`, in request order.
        """
        now = self.clock()
        deadlines = [
            (started[i] if started is not None else now) + self.max_seconds if self.max_seconds is not None else None
            for i in range(len(requests))
        ]
        callers_gone = list(gone) if gone is not None else [_never] * len(requests)
        outcomes: list[Outcome | None] = [None] * len(requests)
        with self._running:
            for indices in self._calls(requests):
                group = [_Item(requests[i], callers_gone[i], deadlines[i]) for i in indices]
                for index, outcome in zip(indices, self._run_isolated(group, progress), strict=True):
                    outcomes[index] = outcome
        assert all(outcome is not None for outcome in outcomes)
        return [outcome for outcome in outcomes if outcome is not None]

    def _calls(self, requests: Sequence[Request]) -> list[list[int]]:
        """Indices of the requests each pipeline call serves: equal batch keys, within the pixel budget."""
        groups: dict[Hashable, list[list[int]]] = {}
        for index, request in enumerate(requests):
            calls = groups.setdefault(self._batch_key(request), [[]])
            budget = self.facts(request.task).max_call_pixels
            if calls[-1] and sum(requests[i].pixels for i in calls[-1]) + request.pixels > budget:
                calls.append([])
            calls[-1].append(index)
        return [call for calls in groups.values() for call in calls]

    def _batch_key(self, request: Request) -> Hashable:
        if request.task != "txt2img" or self._draws_noise(request.task, request.scheduler):
            return ("alone", id(request))
        # SDXL guides against zeros without a negative prompt, and against the encoded one with it.
        has_negative = request.negative_prompt is not None
        return (
            request.task,
            request.width,
            request.height,
            request.steps,
            request.scheduler,
            request.guidance,
            has_negative,
        )

    def _draws_noise(self, task: str, scheduler: str) -> bool:
        key = (task, scheduler)
        if key not in self._noisy:
            self._noisy[key] = draws_step_noise(self._scheduler(task, scheduler))
        return self._noisy[key]

    def _scheduler(self, task: str, name: str) -> Scheduler:
        """A fresh scheduler (they keep state between steps) configured from the task's folder."""
        config = ModelFolder(self.folder(task)).scheduler_config()
        return load_scheduler(None if name == MODEL_SCHEDULER else name, config)

    def _run_isolated(self, group: list[_Item], progress: bool) -> list[Outcome]:
        """One call for the group; if it fails, one call per request, so that a failure is its request's own."""
        try:
            return self._run_call(group, progress)
        except _Stop:
            return [item.stopped(self.clock()) for item in group]
        except Exception as exc:
            if len(group) == 1:
                return [ModelFailedError(f"the model failed on a valid request: {type(exc).__name__}: {exc}")]
        return [self._run_isolated([item], progress)[0] for item in group]

    def _run_call(self, group: list[_Item], progress: bool) -> list[Outcome]:
        first = group[0].request
        if all(item.finished(self.clock()) for item in group):
            raise _Stop
        # Each task's pipeline class has its own call signature: the branches below spell them out.
        pipe: Any = self.pipeline(first.task)
        pipe.scheduler = self._scheduler(first.task, first.scheduler)

        def check(_pipe: Any, step: int, _t: torch.Tensor, _tensors: dict[str, torch.Tensor]) -> None:
            # After each step: stop once nobody waits for the pictures, or they are late.
            if all(item.finished(self.clock()) for item in group):
                raise _Stop

        common: dict[str, Any] = {
            "negative_prompt": first.negative_prompt,
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance,
            "progress": progress,
            "callback_on_step_end": check,
        }
        if first.task == "txt2img":
            out = pipe(
                [item.request.prompt for item in group for _ in range(item.request.batch)],
                **{**common, "negative_prompt": _negatives(group)},
                height=first.height,
                width=first.width,
                # Each request's initial latents from its own seed, as a single run draws them.
                latents=torch.cat(
                    [
                        randn_tensor(
                            pipe.latent_shape(item.request.batch, first.height, first.width),
                            generator=seeded_generator(item.request.seed),
                            device=pipe.device,
                            dtype=torch.float32,
                        )
                        for item in group
                    ]
                ),
                # Step noise (ancestral schedulers) only for a request alone: see the module's note.
                generator=seeded_generator(first.seed) if len(group) == 1 else None,
            )
        elif first.task == "img2img":
            out = pipe(
                first.prompt,
                image=first.image,
                strength=first.strength,
                num_images_per_prompt=first.batch,
                generator=seeded_generator(first.seed),
                **common,
            )
        else:
            out = pipe(
                first.prompt,
                image=first.image,
                mask_image=first.mask_image,
                height=first.height,
                width=first.width,
                strength=first.strength,
                num_images_per_prompt=first.batch,
                generator=seeded_generator(first.seed),
                **common,
            )
        images = list(out.images)
        results: list[Outcome] = []
        for item in group:
            count = item.request.batch
            results.append(
                Result(
                    images=images[:count],
                    batch_size=len(group),
                    pipeline=type(pipe).__name__,
                    scheduler=type(pipe.scheduler).__name__,
                    seconds=out.seconds,
                    seconds_per_step=out.seconds_per_step,
                    ort_seconds=out.ort_seconds,
                )
            )
            images = images[count:]
        return results


@dataclass
class _Item:
    """A request in a call, with what says whether its caller still waits."""

    request: Request
    gone: Callable[[], bool]
    deadline: float | None

    def late(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline

    def finished(self, now: float) -> bool:
        """Nobody waits for this request's pictures any more."""
        return self.gone() or self.late(now)

    def stopped(self, now: float) -> AppError:
        if self.gone():
            return CallerGoneError("the caller left; the run was stopped")
        return RunTimeoutError(
            "the run took longer than this server gives one request and was stopped; "
            "ask for fewer steps or a smaller image"
        )


def _never() -> bool:
    return False


def _negatives(group: list[_Item]) -> list[str] | None:
    """The call's negative prompts, one per image; None when no request has one (the group never mixes)."""
    if all(item.request.negative_prompt is None for item in group):
        return None
    return [item.request.negative_prompt or "" for item in group for _ in range(item.request.batch)]


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def available_memory(device: torch.device | str) -> int:
    """Bytes free for a call on ``device``: the GPU's free memory, or the host's (within a cgroup's limit)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    available = _meminfo_available()
    limit = _cgroup_room()
    return min(available, limit) if limit is not None else available


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def _cgroup_room() -> int | None:
    """What the process's cgroup (v2) still allows, when it sets a memory limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        return None
