"""The memory allocator of tuneflow's training processes: jemalloc where it is installed, keeping the pages a
fit frees within a bound.

A training step allocates and frees tensors of a few MB to a few hundred MB thousands of times. glibc's
malloc serves the mid-sized ones from its heap and, once they are freed, cannot hand the fragmented space
back or reuse it well: fine-tuning SmolLM2-135M with LoRA held 7.4 GB of resident memory for ~2 GB of live
tensors. jemalloc fragments far less. When it hands a freed page back (its decay) is the trade-off,
measured by ``python -m bench.allocator`` through the real CLI (``bench/RESULTS.md``, the allocator rows):

- never (``dirty_decay_ms:-1``, the default until 2026-12): the fastest chat steps, but batches of varying
  shapes (classification and NER batches grouped by length) leave blocks no later step fits in; resident
  memory grew 1.5-3 GB per epoch (BANKING77: 3.1 -> 11.8 GB in 4 epochs; an OOM kill at 23.8 GB).
- any finite decay: level memory everywhere (intents 1.5 GB, NER 1.8 GB, chat LoRA 2.0 GB) and intent and
  NER epochs as fast as under glibc; but jemalloc then hands a freed block of more than a few MB back at
  once (measured: 1 s, 10 s, 30 s and 10 min alike), and a chat step (15 s on 2 CPU cores) faulted in again
  every block the previous one freed: 1.65-1.8x slower epochs.

So the process starts with a 10 s decay (:data:`MALLOC_CONF`), and a fit keeps every page its steps free
(:func:`set_decay_ms` -1) until resident memory passes a bound, then hands them all back at once
(``tuneflow.fitting.callbacks.BoundedReuse``): the bound is the largest step seen right after such a purge
plus 20 %, so it follows the largest batch and stops only the growth.

``tuneflow run|tune|retrain`` therefore restart themselves once, before importing anything heavy, with
jemalloc preloaded when the system has it (Debian/Ubuntu: ``apt install libjemalloc2``). Set
``TUNEFLOW_ALLOCATOR=system`` to keep glibc's malloc (a ``MALLOC_CONF`` of your own is kept, and then the
fit leaves the decay alone). Processes started otherwise (a Prefect worker, a notebook) choose their
allocator themselves: ``LD_PRELOAD=libjemalloc.so.2`` with :data:`MALLOC_CONF`.

What a stage kept is handed back when it ends (:func:`release_free_memory`): the export and evaluation that
follow a fit need other sizes.

May import: nothing of tuneflow (it runs before anything is imported).
"""

from __future__ import annotations

import ctypes.util
import os
import sys

SWITCH = "TUNEFLOW_ALLOCATOR"  # system: glibc's malloc; set to jemalloc once the restart happened
DEFAULT_DECAY_MS = 10_000  # outside fits (BoundedReuse keeps pages within a fit)
# No background_thread: on 2 cores jemalloc's purging thread preempts a torch worker while the other spins at
# an OpenMP barrier. muzzy 0: handed-back pages leave the resident set at once (MADV_DONTNEED).
MALLOC_CONF = f"dirty_decay_ms:{DEFAULT_DECAY_MS},muzzy_decay_ms:0"
COMMANDS = ("run", "tune", "retrain")  # the commands that train


def jemalloc() -> str | None:
    """The name of a loadable jemalloc library on this system, or None."""
    if not sys.platform.startswith("linux"):
        return None
    # From the linker's cache; not test-loaded here: jemalloc can only be loaded at a process's start.
    return ctypes.util.find_library("jemalloc")


def preload_env(environ: dict[str, str]) -> dict[str, str] | None:
    """The environment that runs a process under jemalloc, or None (not installed, turned off with
    ``TUNEFLOW_ALLOCATOR=system``, or already preloaded)."""
    if environ.get(SWITCH) in ("system", "jemalloc") or "jemalloc" in environ.get("LD_PRELOAD", ""):
        return None
    lib = jemalloc()
    if lib is None:
        return None
    preload = " ".join(p for p in (lib, environ.get("LD_PRELOAD", "")) if p)
    return {
        **environ,
        "LD_PRELOAD": preload,
        "MALLOC_CONF": environ.get("MALLOC_CONF", MALLOC_CONF),
        SWITCH: "jemalloc",
    }


def use_jemalloc(argv: list[str] | None = None) -> None:
    """Restart this process under jemalloc when ``argv`` (default: ``sys.argv``) is a training command and
    jemalloc is there."""
    argv = sys.argv if argv is None else argv
    if len(argv) < 2 or argv[1] not in COMMANDS:
        return
    env = preload_env(dict(os.environ))
    if env is not None:
        os.execve(sys.executable, sys.orig_argv, env)


# jemalloc's MALLCTL_ARENAS_ALL: "every arena" in an ``arena.<i>.*`` name.
_ALL_ARENAS = 4096


def release_free_memory() -> str | None:
    """Hand the pages the allocator keeps for reuse back to the system (called when a stage ends).

    jemalloc keeps freed pages for a while (its decay; within a fit, up to the fit's bound); between stages
    they are only a cost: a full fine-tune's optimizer state and activations would stay
    resident while the export and evaluation allocate tensors of other sizes beside them. glibc's
    ``malloc_trim`` does the same for its heap.

    Returns:
        What released: ``"jemalloc"``, ``"glibc"``, or None where neither is available (macOS, musl).
    """
    mallctl = _mallctl()
    if mallctl is not None:
        name = f"arena.{_ALL_ARENAS}.purge".encode()
        if mallctl(name, None, None, None, ctypes.c_size_t(0)) == 0:
            return "jemalloc"
    if not sys.platform.startswith("linux"):
        return None
    process = ctypes.CDLL(None)
    trim = getattr(process, "malloc_trim", None)
    if trim is not None:
        trim(ctypes.c_size_t(0))
        return "glibc"
    return None


def _mallctl():  # noqa: ANN202
    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(None), "mallctl", None)  # resolves only when jemalloc is the process's malloc


def paced() -> bool:
    """Whether a fit may set jemalloc's decay (``BoundedReuse``): jemalloc with tuneflow's own settings (a
    ``MALLOC_CONF`` of the user's is left as it is)."""
    return _mallctl() is not None and os.environ.get("MALLOC_CONF") == MALLOC_CONF


def set_decay_ms(ms: int) -> bool:
    """How long jemalloc keeps a freed page before handing it back, for every arena and the ones created
    later; False where jemalloc is not the allocator."""
    mallctl = _mallctl()
    if mallctl is None:
        return False
    narenas, size = ctypes.c_uint(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_uint))
    if mallctl(b"arenas.narenas", ctypes.byref(narenas), ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
        return False
    value = ctypes.c_ssize_t(ms)
    names = [b"arenas.dirty_decay_ms", *(f"arena.{i}.dirty_decay_ms".encode() for i in range(narenas.value))]
    for name in names:  # an arena index not in use answers EFAULT: nothing to set there
        mallctl(name, None, None, ctypes.byref(value), ctypes.c_size_t(ctypes.sizeof(value)))
    return True


def resident_mb(pid: int | str = "self") -> float | None:
    """The resident memory of process ``pid`` (this one by default) in MB; None once it is gone, or off
    Linux."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class PeakWatch:
    """The peak resident memory of this process while a ``with`` block runs, sampled every ``every_s`` by a
    thread (a /proc read: microseconds). Sampled, not the kernel's high-water mark: resetting that
    (``/proc/self/clear_refs``) would also reset what ``time -v`` and ``getrusage`` report for the process.
    """

    def __init__(self, every_s: float = 0.2) -> None:
        import threading

        self.every_s, self.peak = every_s, resident_mb()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(self.every_s):
            self._update()

    def _update(self) -> None:
        mb = resident_mb()
        if mb is not None and (self.peak is None or mb > self.peak):
            self.peak = mb

    def __enter__(self) -> PeakWatch:
        if self.peak is not None:  # Linux
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        self._update()
