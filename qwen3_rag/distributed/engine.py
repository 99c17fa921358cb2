"""``qwen3-rag index --engine ray``: the driver of the Ray Data pipeline.

files (driver: listing, stored ids) -> read and chunk (Ray tasks) -> embed and upsert (a pool
of actors, each holding one model) -> the driver, which counts, removes stale chunks once a
file's new chunks are all stored, and shows progress. The semantics are the single-process
indexer's (:mod:`qwen3_rag.cli.index`): same chunk ids and metadata, same stored-config check,
idempotent, resumable after a kill of any process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import socket
import sys
import threading
import time
from collections import Counter as Tally
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from qwen3_rag.cli.common import (
    EXIT_OK,
    CliError,
    Interrupted,
    StopRequest,
    deferred_stop,
    format_duration,
    logger,
    model_reference,
)
from qwen3_rag.cli.index import (
    PROGRESS_SECONDS,
    FilePlan,
    IndexStats,
    Progress,
    record_plan,
    remove_missing_sources,
    report,
    warn_truncated,
)
from qwen3_rag.cli.store import (
    _existing_ids,
    index_model_options,
    model_hint,
    open_client,
    storage_errors,
    stored_config,
    stored_for_index,
)
from qwen3_rag.core import EmbedderConfig, ModelLoadError
from qwen3_rag.documents import find_files

RAY_INSTALL = 'pip install "qwen3-rag[ray]"'
#: Chunks per embed-and-upsert batch: large enough to fill a GPU's token budget with
#: paragraph-sized chunks, small enough that a killed worker redoes little.
DEFAULT_BATCH_SIZE = 256
#: Seconds to wait for a TCP connection to the Ray address before calling it unreachable.
CONNECT_SECONDS = 5.0


def cmd_index_ray(args: argparse.Namespace) -> int:
    """Index with Ray Data into a Chroma server (options already checked by ``cmd_index``)."""
    stats, count, seconds = run_ray_index(args)
    report(args, stats, count, seconds)
    return EXIT_OK


def run_ray_index(args: argparse.Namespace) -> tuple[IndexStats, int, float]:
    """Run the pipeline for parsed ``index`` arguments: the counts, the collection size, seconds."""
    _check_ray_options(args)
    try:
        import ray.data  # noqa: F401 - the check that the extra is installed
    except ImportError as e:
        raise CliError(f"ray is not installed; --engine ray needs: {RAY_INSTALL}") from e
    started = time.perf_counter()
    files = find_files(args.paths)
    hint = f"qwen3-rag index {' '.join(args.paths)} --chroma-url {args.chroma_url} --rebuild"
    client = open_client(args, write=True, rebuild_hint=hint)
    if args.ray_address:
        _probe_ray_address(args.ray_address)
    with storage_errors(None, hint):
        stored = stored_for_index(args, client)
        model, options = index_model_options(args, stored)
        model = model_reference(model)
        _check_model(model, options, local=args.ray_address is None)
        existing = {} if stored is None else _existing_ids(_collection(client, args.collection))
    # Ray prints its notices (a worker died, logs of workers with -v) on stdout; stdout is for
    # the result (--json), so they go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        stats = _connected(args, files, model, options, existing)
    with storage_errors(None, hint):
        count = _collection(client, args.collection).count()
    return stats, count, time.perf_counter() - started


def _connected(
    args: argparse.Namespace,
    files: list[Path],
    model: str,
    options: dict[str, Any],
    existing: dict[str, set[str]],
) -> IndexStats:
    import ray

    _connect(args.ray_address, bool(args.verbose))
    try:
        with deferred_stop() as stop:
            return _run(args, files, model, options, existing, stop)
    finally:
        # Disconnects from a cluster; stops the local Ray this run started.
        ray.shutdown()


def _check_ray_options(args: argparse.Namespace) -> None:
    if args.db is not None or not args.chroma_url:
        raise CliError(
            "--engine ray writes into a Chroma server, not an embedded database (--db): "
            "embedded Chroma is a single-process store that Ray's workers cannot share; start "
            "a server (`chroma run --path ./chroma_data`) and pass --chroma-url "
            "http://localhost:8000"
        )
    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        raise CliError(f"--gpus-per-worker must be 0 or more, got {args.gpus_per_worker}")
    if args.batch_size is not None and args.batch_size < 1:
        raise CliError(f"--batch-size must be at least 1, got {args.batch_size}")


def _collection(client: Any, name: str) -> Any:
    # Without an embedding function: get, count and delete never load the model here.
    return client.get_collection(name, embedding_function=None)


def _check_model(model: str, options: dict[str, Any], *, local: bool) -> None:
    """Fail in the driver, before Ray starts, on a model the workers could not load.

    Only the folder and its config.json are read. A hub id is resolved here only when the
    workers share this machine (and its cache); on a cluster each worker resolves it.
    """
    from qwen3_rag.core.loading import check_qwen3_config, resolve_model_dir

    if not local and not Path(model).exists():
        return
    config = EmbedderConfig(**options)
    with model_hint("--embedding-model", "EMBED_MODEL"):
        path = resolve_model_dir(
            model,
            revision=config.revision,
            cache_dir=config.cache_dir,
            local_files_only=config.local_files_only,
        )
        hidden = int(check_qwen3_config(path).hidden_size)
    if config.dimensions is not None and config.dimensions > hidden:
        raise CliError(f"dimensions={config.dimensions} is out of range: {model!r} has {hidden}")


def _probe_ray_address(address: str) -> None:
    """A TCP connection to the cluster, so that a wrong address fails in seconds."""
    if address == "auto":
        return  # ray.init finds the local cluster's address file, or fails at once
    url = urlparse(address if "://" in address else f"ray-gcs://{address}")
    default = 10001 if url.scheme == "ray" else 6379
    try:
        host, port = url.hostname, url.port or default
    except ValueError as e:
        raise CliError(f"--ray-address {address!r} is not HOST:PORT or ray://HOST:PORT") from e
    if not host:
        raise CliError(f"--ray-address {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise CliError(
            f"cannot reach the Ray cluster at {address} ({e.strerror or e}); start it with "
            "`ray start --head`, or leave --ray-address out to run Ray on this machine"
        ) from e


def _connect(address: str | None, verbose: bool) -> None:
    """Join the cluster at ``address``, or start a local Ray sized to this machine."""
    import ray

    level = logging.INFO if verbose else logging.ERROR
    common: dict[str, Any] = {"log_to_driver": verbose, "logging_level": level}
    try:
        if address:
            ray.init(address=address, **common)
        else:
            # "local": a new instance, never a cluster that `ray start` left on this machine.
            # Sized to the machine: Ray counts its CPUs (container limits included) and GPUs.
            # Workers at the default priority, as the local engine's model is: Ray nices them
            # (15) so that its own daemons stay responsive, which on a small machine hands the
            # model's cores to every other process (measured: 5-7% of throughput on 2 cores).
            # A cluster that this run joins keeps its own setting.
            ray.init(
                address="local",
                include_dashboard=False,
                _system_config={"worker_niceness": 0},
                **common,
            )
    except (ConnectionError, RuntimeError, TimeoutError) as e:
        where = address or "a new local instance"
        raise CliError(f"cannot start or join Ray at {where}: {_first_line(e)}") from e
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def _sizing(args: argparse.Namespace) -> dict[str, Any]:
    """Workers, GPUs and CPUs per worker, and the read stage's share, from the cluster."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    per_gpu = args.gpus_per_worker if args.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    if per_gpu:
        workers = args.workers or max(1, int(gpus // per_gpu))
        if workers * per_gpu > gpus:
            raise CliError(
                f"--workers {workers} x --gpus-per-worker {per_gpu:g} needs "
                f"{workers * per_gpu:g} GPUs; the Ray cluster has {gpus:g}"
            )
        # A GPU worker's CPU does tokenization and the upserts.
        worker_cpus, threads = 1, None
    else:
        workers = args.workers or 1
        largest = max(
            (n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=cpus
        )
        worker_cpus = max(1, min(int(cpus // workers), int(largest)))
        threads = worker_cpus
        if workers * worker_cpus > cpus:
            raise CliError(
                f"--workers {workers} needs {workers} CPUs; the Ray cluster has {cpus:g}"
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
    args: argparse.Namespace,
    files: list[Path],
    model: str,
    options: dict[str, Any],
    existing: dict[str, set[str]],
    stop: StopRequest,
) -> IndexStats:
    import ray

    from qwen3_rag.distributed.workers import (
        CALLS_PER_CPU_WORKER,
        CALLS_PER_GPU_WORKER,
        Counter,
        EmbedWriter,
        create_collection,
        read_files,
    )

    size = _sizing(args)
    verbose = bool(args.verbose)
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
            "chunk_size": args.chunk_size,
            "chunk_overlap": args.chunk_overlap,
            "counter": counter,
            "verbose": verbose,
        },
        num_cpus=size["read_cpus"],
        compute=ray.data.TaskPoolStrategy(size=size["readers"]),
    )
    worker_options = {k: v for k, v in options.items() if k != "device"}
    if "device" in options or not size["gpus"]:
        # A CPU worker stays on the CPU even where the node has a GPU it did not reserve.
        worker_options["device"] = options.get("device") or "cpu"
    dataset = dataset.map_batches(
        EmbedWriter,
        batch_size=args.batch_size or DEFAULT_BATCH_SIZE,
        fn_constructor_kwargs={
            "model": model,
            "options": worker_options,
            "chroma_url": args.chroma_url,
            "collection": args.collection,
            "threads": size["threads"],
            "counter": counter,
            "verbose": verbose,
        },
        # Ray Data's actor pools restart a killed actor and retry its batches without limit
        # (max_restarts=-1, max_task_retries=-1 are its defaults); upserts make a retried
        # batch harmless.
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
        args.batch_size or DEFAULT_BATCH_SIZE,
    )
    stats = IndexStats()
    driver = _Driver(args, stats, existing)
    progress = _ProgressThread(not args.quiet, counter, driver, len(files))
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
    warn_truncated(driver.truncated, driver.embedded, int(EmbedderConfig(**options).max_length))
    if driver.collection is None:
        if stored_config(driver.client, args.collection) is None:
            # Nothing was written, so no worker opened the collection: create it as they
            # would, so that a run over empty files leaves what the local engine leaves.
            task = ray.remote(create_collection).options(
                num_cpus=size["cpus"], num_gpus=size["gpus"] or None
            )
            ray.get(task.remote(args.chroma_url, args.collection, model, worker_options))
        driver.collection = _collection(driver.client, args.collection)
    remove_missing_sources(args.paths, existing, stats, driver.collection)
    progress.show(final=True)
    return stats


def _pipeline_error(error: Exception) -> Exception:
    """A worker's error as the user's one line where it is theirs to fix; bugs stay as they are."""
    if isinstance(error, (CliError, Interrupted)):
        return error
    from chromadb.errors import ChromaError
    from ray.exceptions import ActorDiedError, RayTaskError

    if isinstance(error, ActorDiedError) and getattr(error, "actor_init_failed", False):
        # The constructor's exception reaches the driver as text only: its last error line.
        lines = [line.strip() for line in str(error).splitlines()]
        found = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
        why = found[-1] if found else _first_line(error)
        return CliError(f"a Ray worker could not start ({why}); -v shows the workers' logs")
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, RayTaskError) and cause.cause is not None:
            cause = cause.cause
            continue
        if isinstance(cause, (CliError, ModelLoadError)):
            return CliError(f"a Ray worker failed: {cause}")
        if isinstance(cause, ChromaError):
            return CliError(f"a Ray worker's write to the Chroma server failed: {cause}")
        cause = cause.__cause__
    return error


class _Driver:
    """Counts the rows coming back and removes each file's stale chunks once it is stored."""

    def __init__(
        self, args: argparse.Namespace, stats: IndexStats, existing: dict[str, set[str]]
    ) -> None:
        self.args = args
        self.stats = stats
        self.client = open_client(args, write=True, rebuild_hint="")
        self.collection = _collection(self.client, args.collection) if existing else None
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
                self.stats.new += 1
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
            record_plan(self.stats, plan)
            self.pending[source] = (planned["fresh"], plan.stale)
            stale |= self._stored(source, self.early.pop(source, 0))
        self.truncated += int(batch["truncated"].sum())
        self.embedded += int(batch["embedded"].sum())
        if stale:
            if self.collection is None:
                self.collection = _collection(self.client, self.args.collection)
            self.collection.delete(ids=sorted(stale))
            self.stats.removed += len(stale)

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
        self.progress = Progress(enabled, 1, files)
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
        interval = 0.5 if self.progress.tty else PROGRESS_SECONDS
        while not self.done.wait(interval):
            self.show()

    def show(self, final: bool = False) -> None:
        if not self.progress.enabled:
            return
        import ray

        try:
            counts = ray.get(self.counter.get.remote(), timeout=10)
        except Exception:  # progress must never stop the run
            return
        elapsed = max(time.monotonic() - self.progress.started, 1e-9)
        written = self.driver.written
        rate = written / elapsed
        line = (
            f"index: {counts['read']:,} chunks read, {counts['embedded']:,} embedded, "
            f"{written:,} written, {rate:,.1f} chunks/s, {counts['files']}/{self.files} files read"
        )
        if final:
            line += f", done in {format_duration(elapsed)}"
        elif counts["files"] == self.files and rate > 0:
            line += f", ETA {format_duration(max(counts['fresh'] - written, 0) / rate)}"
        self.progress.emit(line, final)
