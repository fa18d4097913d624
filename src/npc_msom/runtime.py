"""Device choice, seeding, environment record, atomic writes, logging and progress bars."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing as mp
import os
import platform
import random
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto"):
    """'auto' -> cuda if available else cpu. Call once at an entry point and pass it down."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def worker_init_fn(worker_id: int) -> None:
    """Seeds NumPy and random in a DataLoader worker from torch's per-worker seed."""
    import torch
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


def environment_record() -> dict:
    env = {"python": sys.version.split()[0], "platform": platform.platform(),
           "processor": platform.processor(), "cpu_count": os.cpu_count()}
    for mod in ("numpy", "torch", "torchvision", "SimpleITK", "pydicom", "pycocotools", "lifelines",
                "sklearn", "pandas"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", getattr(m, "Version", lambda: "?")() if mod == "SimpleITK" else "?")
        except Exception:  # noqa: BLE001 - a missing optional module is just recorded
            env[mod] = None
    try:
        import torch
        env["cuda"] = torch.cuda.is_available()
        if env["cuda"]:
            env["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return env


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renamed into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the artifact the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---- settings digests: what an artifact was made with, and refusing to reuse it under others ----

def settings_digest(obj) -> str:
    """A short stable digest of plain data (sorted-key JSON): names a set of settings in one word."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def settings_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``["section.key: old -> new", ...]`` for every leaf that differs between two settings dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def check_settings(old: dict | None, new: dict, *, where: str | Path, force: bool, how_to_force: str) -> bool:
    """May an artifact made with ``old`` settings be reused (resumed, skipped) under ``new`` ones?

    True when they are equal. When they differ: False under ``force`` (the caller redoes the work),
    else :class:`~npc_msom.errors.StaleArtifactError` naming the differing settings (at most six)
    and ``how_to_force`` (e.g. ``"--force detection"``). ``old`` None = an artifact of a version that
    did not record its settings, which is never trusted silently.
    """
    from npc_msom.errors import StaleArtifactError  # noqa: PLC0415 - errors has no dependencies
    if old == new:
        return True
    if force:
        log.info("%s: made with other settings; redoing it (--force)", where)
        return False
    diff = (["no settings recorded (made by an older version)"] if old is None
            else settings_differences(old, new))
    more = f"; and {len(diff) - 6} more" if len(diff) > 6 else ""
    raise StaleArtifactError(f"{where} was made with other settings ({'; '.join(diff[:6])}{more}); "
                             f"rerun with {how_to_force} to redo it, or use another run folder")


# the stage that ``npc-msom run`` is in, e.g. "[3/7 detection]": every progress bar starts with it
_STAGE_LABELS: list[str] = []


@contextlib.contextmanager
def stage_label(label: str):
    """Prefixes every progress bar opened inside with ``label`` (the whole run's position)."""
    _STAGE_LABELS.append(label)
    try:
        yield
    finally:
        _STAGE_LABELS.pop()


def progress(iterable: Iterable, **kwargs):
    """tqdm progress bar (with its ETA), switched off when not on a terminal or in CI; inside
    :func:`stage_label` its description starts with the run's stage."""
    from tqdm.auto import tqdm
    if _STAGE_LABELS:
        kwargs["desc"] = f"{_STAGE_LABELS[-1]} {kwargs.get('desc') or ''}".rstrip()
    disable = kwargs.pop("disable", None)
    if disable is None:
        disable = bool(os.environ.get("CI")) or not sys.stderr.isatty()
    return tqdm(iterable, disable=disable, **kwargs)


# What the worker processes of :func:`imap_forked` share: set in each worker by the pool's
# initializer, so it is inherited at fork and never pickled.
_FORKED_SHARED: Any = None


def _forked_init(shared: Any, initializer: Callable | None, initargs: tuple) -> None:
    global _FORKED_SHARED
    _FORKED_SHARED = shared
    if initializer is not None:
        initializer(*initargs)


def _forked_call(func_job: tuple[Callable, Any]) -> Any:
    func, job = func_job
    return func(_FORKED_SHARED, job)


def imap_forked(func: Callable[[Any, Any], Any], jobs: Iterable, shared: Any, *, workers: int,
                desc: str | None = None, initializer: Callable | None = None, initargs: tuple = ()) -> Iterator:
    """``func(shared, job)`` for every job, in ``workers`` forked processes when ``workers > 1`` and
    there is more than one job (results in the order they finish), else in this process (in order).

    ``shared`` (a cohort index: every file and structure set of 186 patients) reaches the workers at
    fork and is never pickled: sent with each job, it was pickled by the main process and unpickled
    by a worker once per patient, which kept the main process busy half a core in the demo. ``func``
    and the jobs are pickled as usual (module-level functions, small tuples). ``initializer(*initargs)``
    runs once in each worker (e.g. one ITK thread per process). With a progress bar (``desc``).
    """
    jobs = list(jobs)
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("fork").Pool(min(workers, len(jobs)), initializer=_forked_init,
                                          initargs=(shared, initializer, initargs)) as pool:
            yield from progress(pool.imap_unordered(_forked_call, [(func, j) for j in jobs]),
                                total=len(jobs), desc=desc)
    else:
        for job in progress(jobs, desc=desc):
            yield func(shared, job)


def setup_logging(level: int = logging.INFO, log_file: str | Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
