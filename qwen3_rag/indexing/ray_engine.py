"""The Ray engine (``qwen3-rag index --engine ray``): the driver of the Ray Data pipeline.

files (driver: listing, stored ids) -> read and chunk (Ray tasks) -> embed and upsert (a pool
of actors, each holding one model) -> the driver, which counts, removes stale chunks once a
file's new chunks are all stored, and shows progress. The semantics are the single-process
indexer's (:mod:`qwen3_rag.indexing.local`): same chunk ids and metadata, same stored-config check,
idempotent, resumable after a kill of any process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import sys
import threading
from collections import Counter as Tally
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from qwen3_rag.core import EmbedderConfig, ModelLoadError

from .documents import SkippedSource
from .errors import IndexingError, Interrupted
from .options import IndexOptions
from .plan import FilePlan, IndexSummary, remove_missing_sources, warn_truncated
from .prepare import Prepared, changed_settings, open_for_index, prepare
from .progress import Progress, StopRequest
from .ray_logs import quiet_ray_backend
from .ray_processes import reap_stale_local_rays, record_local_ray
from .store import Store

logger = logging.getLogger("qwen3_rag.indexing")

RAY_INSTALL = 'pip install "qwen3-rag[ray]"'
#: Seconds to wait for a TCP connection to the Ray address before calling it unreachable.
CONNECT_SECONDS = 5.0


def index_with_ray_engine(
    paths: Sequence[str],
    files: list[Path],
    skipped: list[SkippedSource],
    options: IndexOptions,
    stop: StopRequest,
    rebuild_hint: str | None = None,
) -> IndexSummary:
    """Run the pipeline: the counts of the run (``seconds`` is left to the caller)."""
    _check_ray_options(options)
    try:
        import ray
        import ray.data  # the extra is installed (ray.data is what the pipeline uses)
    except ImportError as e:
        raise IndexingError(f"ray is not installed; the Ray engine needs: {RAY_INSTALL}") from e
    with open_for_index(options, rebuild_hint) as store:
        if options.ray_address:
            _probe_ray_address(options.ray_address)
        with store.errors():
            prepared = prepare(store, options)
            checked = _check_model(
                prepared.model, prepared.embedder, local=options.ray_address is None
            )
        # Ray prints its notices (a worker died, logs of workers with -v) on stdout; stdout
        # is for the result (--json), so they go to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            _connect(options.ray_address, options.verbose)
            try:
                summary = _run(paths, files, skipped, options, prepared, store, stop)
            finally:
                # Disconnects from a cluster; stops the local Ray this run started.
                ray.shutdown()
        with store.errors():
            summary.collection_count = store.collection().count()
    if checked is not None:
        summary.changed = changed_settings(
            prepared.previous, prepared.model, prepared.embedder, *checked
        )
    return summary


def _check_ray_options(options: IndexOptions) -> None:
    if not options.store.chroma_url:
        raise IndexingError(
            "the Ray engine writes into a Chroma server, not an embedded database (--db): "
            "embedded Chroma is a single-process store that Ray's workers cannot share; start "
            "a server (`chroma run --path ./chroma_data`) and pass --chroma-url "
            "http://localhost:8000"
        )


def _check_model(model: str, options: dict[str, Any], *, local: bool) -> tuple[int, str] | None:
    """Fail in the driver, before Ray starts, on a model the workers could not load.

    Only the folder's config files are read. A hub id is resolved here only when the workers
    share this machine (and its cache); on a cluster each worker resolves it.

    Returns:
        The model's hidden size and the query instruction in effect, or None where the folder
        was not read.
    """
    from qwen3_rag.core.config import check_dimensions
    from qwen3_rag.core.loading import check_qwen3_config, default_query_task, resolve_model_dir

    if not local and not Path(model).exists():
        return None
    config = EmbedderConfig(**options)
    path = resolve_model_dir(
        model,
        revision=config.revision,
        cache_dir=config.cache_dir,
        local_files_only=config.local_files_only,
    )
    hidden = int(check_qwen3_config(path).hidden_size)
    if config.dimensions is not None:
        check_dimensions(config.dimensions, hidden, model)
    task = default_query_task(path) if config.instruction is None else config.instruction
    return hidden, task


def _probe_ray_address(address: str) -> None:
    """A TCP connection to the cluster, so that a wrong address fails in seconds."""
    if address == "auto":
        return  # ray.init finds the local cluster's address file, or fails at once
    url = urlparse(address if "://" in address else f"ray-gcs://{address}")
    default = 10001 if url.scheme == "ray" else 6379
    try:
        host, port = url.hostname, url.port or default
    except ValueError as e:
        raise IndexingError(f"ray_address {address!r} is not HOST:PORT or ray://HOST:PORT") from e
    if not host:
        raise IndexingError(f"ray_address {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise IndexingError(
            f"cannot reach the Ray cluster at {address} ({e.strerror or e}); start it with "
            "`ray start --head`, or leave --ray-address out to run Ray on this machine"
        ) from e


def _connect(address: str | None, verbose: bool) -> None:
    """Join the cluster at ``address``, or start a local Ray sized to this machine."""
    import ray

    level = logging.INFO if verbose else logging.ERROR
    common: dict[str, Any] = {"log_to_driver": verbose, "logging_level": level}
    try:
        with quiet_ray_backend(verbose):
            if address:
                ray.init(address=address, **common)
            else:
                reap_stale_local_rays()
                # "local": a new instance, never a cluster that `ray start` left on this
                # machine. Sized to the machine: Ray counts its CPUs (container limits
                # included) and GPUs. Workers at the default priority, as the local engine's
                # model is: Ray nices them (15) so that its own daemons stay responsive, which
                # on a small machine hands the model's cores to every other process
                # (measured: 5-7% of throughput on 2 cores). A cluster that this run joins
                # keeps its own setting.
                ray.init(
                    address="local",
                    include_dashboard=False,
                    _system_config={"worker_niceness": 0},
                    **common,
                )
                record_local_ray()
    except (ConnectionError, RuntimeError, TimeoutError) as e:
        where = address or "a new local instance"
        raise IndexingError(f"cannot start or join Ray at {where}: {_first_line(e)}") from e
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def _sizing(options: IndexOptions) -> dict[str, Any]:
    """Workers, GPUs and CPUs per worker, and the read stage's share, from the cluster."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    per_gpu = (
        options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    )
    if per_gpu:
        workers = options.workers or max(1, int(gpus // per_gpu))
        if workers * per_gpu > gpus:
            raise IndexingError(
                f"workers={workers} x gpus_per_worker={per_gpu:g} needs "
                f"{workers * per_gpu:g} GPUs; the Ray cluster has {gpus:g}"
            )
        # A GPU worker's CPU does tokenization and the upserts.
        worker_cpus, threads = 1, None
    else:
        workers = options.workers or 1
        largest = max(
            (n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=cpus
        )
        worker_cpus = max(1, min(int(cpus // workers), int(largest)))
        threads = worker_cpus
        if workers * worker_cpus > cpus:
            raise IndexingError(
                f"workers={workers} needs {workers} CPUs; the Ray cluster has {cpus:g}"
            )
    # Reading is light next to embedding: it takes the CPUs the workers leave, or, where they
    # take all, runs one task at a time beside them.
    spare = int(cpus - workers * worker_cpus)
    return {
        "workers": workers,
        "gpus": per_gpu,
        "cpus": worker_cpus,
        "threads": threads,
        "read_cpus": 1 if spare >= 1 else 0,
        "readers": max(1, spare),
    }


def _run(
    paths: Sequence[str],
    files: list[Path],
    skipped: list[SkippedSource],
    options: IndexOptions,
    prepared: Prepared,
    store: Store,
    stop: StopRequest,
) -> IndexSummary:
    import ray

    from .ray_workers import (
        CALLS_PER_CPU_WORKER,
        CALLS_PER_GPU_WORKER,
        Counter,
        EmbedWriter,
        create_collection,
        read_files,
    )

    size = _sizing(options)
    verbose = options.verbose
    chroma_url = str(options.store.chroma_url)
    name = options.store.collection
    existing = prepared.existing
    counter = ray.remote(num_cpus=0)(Counter).remote()
    items = [
        {"path": str(p), "stored": json.dumps(sorted(existing.get(str(p), ())))} for p in files
    ]
    cpus = int(ray.cluster_resources().get("CPU", 1))
    dataset: Any = ray.data.from_items(
        items, override_num_blocks=min(len(items), max(16, 4 * cpus))
    )
    dataset = dataset.map_batches(
        read_files,
        batch_size=None,
        fn_kwargs={
            "chunk_size": options.chunk_size,
            "chunk_overlap": options.chunk_overlap,
            "counter": counter,
            "verbose": verbose,
        },
        num_cpus=size["read_cpus"],
        compute=ray.data.TaskPoolStrategy(size=size["readers"]),
    )
    worker_options = {k: v for k, v in prepared.embedder.items() if k != "device"}
    if "device" in prepared.embedder or not size["gpus"]:
        # A CPU worker stays on the CPU even where the node has a GPU it did not reserve.
        worker_options["device"] = prepared.embedder.get("device") or "cpu"
    dataset = dataset.map_batches(
        EmbedWriter,
        batch_size=options.ray_batch_size,
        fn_constructor_kwargs={
            "model": prepared.model,
            "options": worker_options,
            "chroma_url": chroma_url,
            "collection": name,
            "threads": size["threads"],
            "counter": counter,
            "verbose": verbose,
        },
        # Ray Data's actor pools restart a killed actor and retry its batches without limit
        # (max_restarts=-1, max_task_retries=-1 are its defaults); upserts make a retried
        # batch harmless, and the Counter fails a batch that keeps killing its worker
        # (ray_workers.MAX_BATCH_ATTEMPTS) instead of retrying it forever.
        compute=ray.data.ActorPoolStrategy(
            size=size["workers"],
            max_concurrent_calls_per_actor=(
                CALLS_PER_GPU_WORKER if size["gpus"] else CALLS_PER_CPU_WORKER
            ),
            enable_true_multi_threading=True,
        ),
        num_gpus=size["gpus"] or None,
        num_cpus=size["cpus"],
    )
    logger.info(
        "ray: %d worker(s), %g GPU and %d CPU each, batches of %d chunks",
        size["workers"],
        size["gpus"],
        size["cpus"],
        options.ray_batch_size,
    )
    summary = IndexSummary()
    for source in skipped:
        summary.skip(source)
    driver = _Driver(store, summary, existing)
    progress = _ProgressThread(options.progress, counter, driver, len(files))
    progress.start()
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            driver.take(batch)
            if stop.signal_name is not None:
                raise Interrupted(
                    f"stopped by {stop.signal_name} after writing {driver.written} chunks"
                )
    except Exception as e:
        raise _pipeline_error(e) from e
    finally:
        progress.stop()
    summary.truncated = driver.truncated
    max_length = EmbedderConfig(**prepared.embedder).max_length
    warn_truncated(driver.truncated, driver.embedded, max_length)
    if driver.collection is None:
        if store.stored_config() is None:
            # Nothing was written, so no worker opened the collection: create it as they
            # would, so that a run over empty files leaves what the local engine leaves.
            task = ray.remote(create_collection).options(
                num_cpus=size["cpus"], num_gpus=size["gpus"] or None
            )
            ray.get(task.remote(chroma_url, name, prepared.model, worker_options))
        driver.collection = store.collection()
    remove_missing_sources(paths, existing, summary, driver.collection)
    progress.show(final=True)
    return summary


def _pipeline_error(error: Exception) -> Exception:
    """A worker's error as the user's one line where it is theirs to fix; bugs stay as they are."""
    if isinstance(error, (IndexingError, Interrupted)):
        return error
    from chromadb.errors import ChromaError
    from ray.exceptions import ActorDiedError, RayTaskError

    from .ray_workers import PoisonBatchError

    if isinstance(error, ActorDiedError) and getattr(error, "actor_init_failed", False):
        # The constructor's exception reaches the driver as text only: its last error line.
        lines = [line.strip() for line in str(error).splitlines()]
        found = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
        why = found[-1] if found else _first_line(error)
        return IndexingError(f"a Ray worker could not start ({why}); -v shows the workers' logs")
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, RayTaskError) and cause.cause is not None:
            cause = cause.cause
            continue
        if isinstance(cause, PoisonBatchError):
            return IndexingError(str(cause))
        if isinstance(cause, (IndexingError, ModelLoadError)):
            return IndexingError(f"a Ray worker failed: {cause}")
        if isinstance(cause, ChromaError):
            return IndexingError(f"a Ray worker's write to the Chroma server failed: {cause}")
        cause = cause.__cause__
    return error


class _Driver:
    """Counts the rows coming back and removes each file's stale chunks once it is stored."""

    def __init__(self, store: Store, summary: IndexSummary, existing: dict[str, set[str]]) -> None:
        self.store = store
        self.summary = summary
        self.collection = store.collection() if existing else None
        #: Files whose new chunks are not all stored: (chunks still to come, stale ids).
        self.pending: dict[str, tuple[int, set[str]]] = {}
        #: Chunks stored before their file's row arrived (batches finish in any order).
        self.early: Tally[str] = Tally()
        self.written = self.truncated = self.embedded = 0
        self.lock = threading.Lock()

    def take(self, batch: dict[str, Any]) -> None:
        stale: set[str] = set()
        for kind, source, info in zip(batch["kind"], batch["source"], batch["info"], strict=True):
            source = str(source)
            if kind == "chunk":
                with self.lock:
                    self.written += 1
                self.summary.new += 1
                if source in self.pending:
                    stale |= self._stored(source, 1)
                else:
                    self.early[source] += 1
                continue
            planned = json.loads(str(info))
            plan = FilePlan(
                source,
                chunks=planned["chunks"],
                stale=set(planned["stale"]),
                skipped=planned["skipped"],
                replaced=planned["replaced"],
                unchanged=planned["unchanged"],
            )
            self.summary.record(plan)
            self.pending[source] = (planned["fresh"], plan.stale)
            stale |= self._stored(source, self.early.pop(source, 0))
        self.truncated += int(batch["truncated"].sum())
        self.embedded += int(batch["embedded"].sum())
        if stale:
            if self.collection is None:
                self.collection = self.store.collection()
            self.collection.delete(ids=sorted(stale))
            self.summary.removed += len(stale)

    def _stored(self, source: str, count: int) -> set[str]:
        """Count ``count`` more stored chunks of ``source``; its stale ids once all are."""
        remaining, stale = self.pending[source]
        remaining -= count
        if remaining > 0:
            self.pending[source] = (remaining, stale)
            return set()
        del self.pending[source]
        return stale


class _ProgressThread:
    """Chunks read, embedded and written, with throughput, from the driver, on stderr."""

    def __init__(self, enabled: bool, counter: Any, driver: _Driver, files: int) -> None:
        self.progress = Progress(enabled, files)
        self.counter = counter
        self.driver = driver
        self.files = files
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="qwen3-rag-progress")

    def start(self) -> None:
        if self.progress.enabled:
            self.thread.start()

    def stop(self) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def _loop(self) -> None:
        while not self.done.wait(max(self.progress.interval, 0.5)):
            self.show()

    def show(self, final: bool = False) -> None:
        if not self.progress.enabled:
            return
        import ray

        try:
            counts = ray.get(self.counter.get.remote(), timeout=10)
        except Exception:  # progress must never stop the run
            return
        written = self.driver.written
        all_read = counts["files"] == self.files
        self.progress.update(
            written=written,
            files_read=counts["files"],
            remaining=counts["fresh"] - written if all_read else None,
            read=counts["read"],
            embedded=counts["embedded"],
            final=final,
        )
