"""Ahead-of-time compiled networks for CPU sliding-window inference (torch.export + AOTInductor), cached on disk.

A network's eval-mode forward, with the autocast precision baked in, is exported for one window batch shape and
compiled by AOTInductor in a child process (killed after :data:`COMPILE_TIMEOUT_S`); the package is kept in
``$MEDSEG_CACHE_DIR/compiled`` (default ``~/.cache/medseg/compiled``) under a key of the weights, precision,
batch shape, torch version and CPU, and later runs load it instead of compiling. A compilation that fails
or times out is remembered under the same key and never retried: prediction runs eagerly, with the same
windows and blending. ``MEDSEG_COMPILE=0`` turns compilation off.

Measured on an AMD EPYC (Zen 5, AVX512-BF16, no AMX), 2 cores, torch 2.13, 2026-11-26, load 1.0-1.4, DynUNet
32-256 on 40x56x40 windows, interleaved in one process, ms per window with 1 / 2 windows per call: bf16 eager
52 / 64, this package 41 / 49 (1.27x / 1.30x); fp32 eager 122 / 130, package 84 / 88 (1.45x). In-process
``torch.compile`` (inductor, freezing) runs as fast as the package (49 vs 48-51 ms at 2 windows) but costs 6-11 s
at every process start even with inductor's own cache; compiling the package takes 13-16 s once, loading it
2 s in a fresh process (imports) and 0.03 s after. Compiling without ``no_grad`` loses most of the gain (57 ms:
no weight prepacking). Not kept, no measurable gain: ``mode="max-autotune"`` (51 vs 50 ms) and
``channels_last_3d`` (eager 68 vs 71 ms, compiled 43.5 vs 43.2 ms, within this shared machine's noise).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

from medseg.model.batching import cached_record, speed_key
from medseg.model.device import _cache_path, autocast, compile_allowed, cpu_model

log = logging.getLogger(__name__)

# A first compilation (~15 s above) pays for itself within one job only over about this many windows (bf16
# saves ~11 ms each, fp32 ~38 ms); smaller jobs run eagerly unless a package for the network is already cached.
MIN_COMPILE_WINDOWS = 1500
COMPILE_TIMEOUT_S = 180.0

_CHOICE_NAME = "compiled_batch.json"
_chosen: dict[str, dict] = {}
_loaded: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
_digests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_forward(net: torch.nn.Module, device: torch.device, dtype: torch.dtype | None,
                     batch_shape: tuple[int, ...], windows: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A compiled eval-mode forward of ``net`` for batches of exactly ``batch_shape``, or None to run eagerly.

    Only on CPU. Behind it runs a package for that batch, or one for a single window called once per window,
    whichever :func:`_package_batch` measured faster on this machine (None where eager was the fastest). A cached
    package is used whatever the job's size; otherwise one is compiled (in a child process, with a timeout) when
    the job runs at least :data:`MIN_COMPILE_WINDOWS` network forwards. The returned function takes a contiguous
    float32 batch of exactly ``batch_shape`` and returns float32 logits.
    """
    if device.type != "cpu" or not compile_allowed():
        return None
    size = _package_batch(net, dtype, batch_shape, windows)
    forward = None if size is None else _package(net, dtype, (size, *batch_shape[1:]), windows)
    if forward is None or size == batch_shape[0]:
        return forward
    return _in_pieces(forward, size)


def _in_pieces(forward: Callable[[torch.Tensor], torch.Tensor], size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward`` (a package for batches of ``size``) on a batch of a multiple of ``size``, piece by piece."""
    return lambda x: torch.cat([forward(x[i:i + size]) for i in range(0, x.shape[0], size)])


def _package(net: torch.nn.Module, dtype: torch.dtype | None, batch_shape: tuple[int, ...],
             windows: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The package for ``batch_shape``: loaded, compiled first when the job is large enough, or None."""
    key = _key(net, dtype, batch_shape)
    if key not in _loaded:
        package = _cache_dir() / f"{key}.pt2"
        failed = package.with_suffix(".failed")
        if failed.exists() or not (package.exists() or windows >= MIN_COMPILE_WINDOWS):
            return None
        if not package.exists() and not _compile(net, dtype, batch_shape, package, failed):
            return None
        try:
            _loaded[key] = torch._inductor.aoti_load_package(str(package))
        except Exception as exc:  # noqa: BLE001 - any unloadable package means eager prediction
            _remember_failure(failed, f"loading failed: {exc}")
            return None
    return _loaded[key]


def _package_batch(net: torch.nn.Module, dtype: torch.dtype | None, batch_shape: tuple[int, ...],
                   windows: int) -> int | None:
    """Windows per package call for batches of ``batch_shape``: ``batch_shape[0]``, 1, or None (eager).

    For a batch over one window, the first job large enough to compile compiles both packages and times them
    against the eager network (:func:`_ms_per_window`); the fastest is cached per architecture, precision,
    window and machine in ``compiled_batch.json`` beside the precision cache. Until then the batch's own package
    is used where one is cached. Measured (DynUNet 16-128, 40x56x40 windows, bf16, 2 windows per call chosen
    eagerly, ms per window): Intel Xeon with AMX, 2 cores, 2026-12-07: eager 23-24, package for 2 windows 27-28,
    package for 1 window 15 (AMD EPYC Zen 5, 2026-11-26: packages for 1 and 2 both faster than eager).
    """
    size = batch_shape[0]
    if size == 1:
        return 1
    def measure_batch() -> dict | None:
        if windows < MIN_COMPILE_WINDOWS:
            return None
        own = _package(net, dtype, batch_shape, windows)
        if own is None:  # no compiler, or no export: the single window's package would fail the same way
            return None
        single = _package(net, dtype, (1, *batch_shape[1:]), windows)
        packages = {str(size): own} if single is None else {str(size): own, "1": single}
        timed = _ms_per_window(net, dtype, batch_shape, packages)
        best = min(timed, key=timed.get)
        log.info("compiled inference on %s: %s (ms per window %s); cached in %s", cpu_model(),
                 "eager" if best == "eager" else f"package for {best} window(s)",
                 ", ".join(f"{n}: {ms:.1f}" for n, ms in timed.items()), _CHOICE_NAME)
        return {"batch": None if best == "eager" else int(best), "ms_per_window": timed}

    record = cached_record(_CHOICE_NAME, speed_key(net, dtype, batch_shape), _chosen, measure_batch)
    return size if record is None else record["batch"]


@torch.no_grad()
def _ms_per_window(net: torch.nn.Module, dtype: torch.dtype | None, batch_shape: tuple[int, ...],
                   packages: dict[str, Callable[[torch.Tensor], torch.Tensor]], repeats: int = 3) -> dict[str, float]:
    """Milliseconds per window of the eager network and of each package (keyed by its batch) on batches of
    ``batch_shape``: one untimed call each, then the fastest of ``repeats`` rounds taken in turn."""
    x = torch.zeros(batch_shape)
    eager = _Exported(net, dtype)
    calls = {"eager": eager, **{n: _in_pieces(f, int(n)) for n, f in packages.items()}}
    best = {name: float("inf") for name in calls}
    for timed in [False] + [True] * repeats:
        for name, call in calls.items():
            t0 = time.perf_counter()
            call(x)
            if timed:
                best[name] = min(best[name], 1000 * (time.perf_counter() - t0) / batch_shape[0])
    return best


class _Exported(torch.nn.Module):
    """The network's forward under its autocast precision, float32 logits out: what gets exported."""

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype | None):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(torch.device("cpu"), self.dtype):
            return self.net(x).float()


def _compile(net: torch.nn.Module, dtype: torch.dtype | None, batch_shape: tuple[int, ...], package: Path,
             failed: Path) -> bool:
    """Export ``net`` here, compile it to ``package`` in a child process; False (remembered) on any failure."""
    package.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=package.parent) as tmp:
        program, partial = Path(tmp) / "program.pt2", Path(tmp) / "package.pt2"
        try:
            with torch.no_grad():
                exported = torch.export.export(_Exported(net.eval(), dtype).eval(), (torch.zeros(batch_shape),))
            torch.export.save(exported, program)
        except Exception as exc:  # noqa: BLE001 - a network torch.export cannot trace runs eagerly
            _remember_failure(failed, f"export failed: {exc}")
            return False
        log.info("compiling the network for CPU inference (once per model and machine, at most %.0f s)",
                 COMPILE_TIMEOUT_S)
        problem = _run_compiler(program, partial)
        if problem:
            _remember_failure(failed, problem)
            return False
        os.replace(partial, package)
    return True


def _run_compiler(program: Path, package: Path) -> str | None:
    """Compile ``program`` to ``package`` in a child process group; the problem in one line, or None."""
    code = "import sys; from medseg.model.compiled import compile_program; compile_program(sys.argv[1], sys.argv[2])"
    proc = subprocess.Popen([sys.executable, "-c", code, str(program), str(package)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the compiler's own children (C++ compilers) too
        proc.wait()
        return f"compilation took over {COMPILE_TIMEOUT_S:.0f} s"
    if proc.returncode != 0 or not package.exists():
        return f"compilation failed: {(err.strip().splitlines() or ['no message'])[-1]}"
    return None


def compile_program(program: str, package: str) -> None:
    """In the child process: AOTInductor-compile an exported program (weights frozen into the package)."""
    # imported here: only the compiling child process needs inductor, which takes seconds to import
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    with torch.no_grad():  # inference only: lets freezing fold the weights and prepack them for oneDNN
        torch._inductor.aoti_compile_and_package(torch.export.load(program), package_path=package)


def _remember_failure(failed: Path, reason: str) -> None:
    log.warning("compiled inference unavailable, predicting eagerly (%s)", reason.splitlines()[0][:300])
    with contextlib.suppress(OSError):
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(reason + "\n")


def _key(net: torch.nn.Module, dtype: torch.dtype | None, batch_shape: tuple[int, ...]) -> str:
    text = repr([_weights_digest(net), str(dtype), list(batch_shape), torch.__version__, cpu_model()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _weights_digest(net: torch.nn.Module) -> str:
    """Hash of the network's class and state (computed again only when a tensor's version changes)."""
    state = net.state_dict()
    versions = tuple(t._version for t in state.values())
    cached = _digests.get(net)
    if cached and cached[0] == versions:
        return cached[1]
    digest = hashlib.sha256(type(net).__qualname__.encode())
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    _digests[net] = (versions, digest.hexdigest())
    return _digests[net][1]


def _cache_dir() -> Path:
    return _cache_path().parent / "compiled"
