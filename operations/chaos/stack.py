"""Finding the running stack: its worker, beat, web and simulator processes, and its broker."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import sqlalchemy as sa
from django.conf import settings

from pisa_site import embedded

def _redis_address(url: str) -> tuple[str, int, int]:
    """(host, port, database number) of a redis:// URL; 127.0.0.1 and localhost are the same host."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    host = "127.0.0.1" if host in {"localhost", "::1"} else host
    return host, parts.port or 6379, int(parts.path.strip("/") or 0)


def _broker_of(environ: dict[str, str]) -> tuple[str, int, int] | None:
    """The broker a product process uses, worked out from its environment the way settings.py does."""
    if environ.get("CELERY_BROKER_URL"):
        return _redis_address(environ["CELERY_BROKER_URL"])
    if environ.get("REDIS_URL"):
        host, port, db = _redis_address(environ["REDIS_URL"])
        return host, port, db + 1
    home = environ.get("PISA_HOME")
    if home:  # settings found the embedded servers of its PISA_HOME
        port = _embedded_redis_port(Path(home))
        return ("127.0.0.1", port, embedded.BROKER_REDIS_DB) if port else None
    return None


def _celery_role(cmdline: list[str]) -> str | None:
    """'worker' or 'beat' for a `celery ... worker|beat` command line (not a shell wrapping one), else None."""
    words = [os.path.basename(word) for word in cmdline]
    if "celery" not in words:
        return None
    return next((word for word in words if word in {"worker", "beat"}), None)


def _worker_queues(cmdline: list[str]) -> set[str]:
    for index, word in enumerate(cmdline):
        if word in {"--queues", "-Q"} and index + 1 < len(cmdline):
            return set(cmdline[index + 1].split(","))
        if word.startswith("--queues="):
            return set(word.split("=", 1)[1].split(","))
    return {settings.CELERY_TASK_DEFAULT_QUEUE}


@dataclass
class Stack:
    """The processes and servers of the running stack this checkout's settings point at."""

    broker_url: str
    ingest_workers: list[psutil.Process]  # the main process of each worker consuming the ingestion queue
    beat: list[psutil.Process]
    simulators: list[psutil.Process]
    embedded_redis: embedded.EmbeddedRedis | None

    def pool_children(self) -> dict[int, psutil.Process]:
        children = {}
        for worker in self.ingest_workers:
            with contextlib.suppress(psutil.Error):
                children.update({child.pid: child for child in worker.children()})
        return children


def stack_find(*, broker_url: str | None = None) -> Stack:
    """Find the stack's Celery workers, beat and simulator by what they run and which broker their environment
    names (other stacks on the machine use other brokers and are never touched), and whether the broker is this
    PISA_HOME's embedded Redis (which can be restarted from here)."""
    broker_url = broker_url or settings.CELERY_BROKER_URL
    ours = _redis_address(broker_url)
    found: dict[str, list[psutil.Process]] = {"worker": [], "beat": [], "simulate": []}
    me = os.getpid()
    for process in psutil.process_iter(["pid", "ppid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        role = _celery_role(cmdline)
        if role is None and "manage.py" in " ".join(cmdline) and "simulate" in cmdline:
            role = "simulate"
        if role is None or process.pid == me:
            continue
        try:
            environ = process.environ()
        except psutil.Error:
            continue  # another user's process: not ours to touch
        if role == "simulate":
            if environ.get("DATABASE_URL", "") and _same_database(environ["DATABASE_URL"]):
                found["simulate"].append(process)
            continue
        if _broker_of(environ) != ours:
            continue
        if role == "worker":
            # Pool processes are forks of their worker, with its command line: keep the worker itself.
            is_pool_child = _celery_role(_cmdline_of(process.info["ppid"])) == "worker"
            if not is_pool_child and "ingestion" in _worker_queues(cmdline):
                found["worker"].append(process)
        else:
            found["beat"].append(process)
    redis = embedded.EmbeddedRedis(settings.PISA_HOME)
    port = _embedded_redis_port(redis.home)
    is_embedded = port is not None and ours[:2] == ("127.0.0.1", port) and redis.is_running()
    return Stack(broker_url=broker_url, ingest_workers=found["worker"], beat=found["beat"],
                 simulators=found["simulate"], embedded_redis=redis if is_embedded else None)


def _embedded_redis_port(home: Path) -> int | None:
    """The port an embedded Redis of that PISA_HOME was given, if it ever ran (EmbeddedRedis.port would pick one)."""
    return embedded.known_port(home / "redis.port")


def _cmdline_of(pid: int | None) -> list[str]:
    try:
        return psutil.Process(pid).cmdline() if pid else []
    except psutil.Error:
        return []


def _same_database(url: str) -> bool:
    def address(parts) -> tuple[str, str]:  # DATABASE_URL's TCP address (Django's HOST may be a socket directory)
        return ("127.0.0.1" if parts.hostname in {"localhost", None} else parts.hostname), str(parts.port or 5432)

    theirs, ours = urlsplit(url), urlsplit(settings.DATABASE_URL)
    return (*address(theirs), theirs.path.strip("/")) == (*address(ours), settings.DATABASES["default"]["NAME"])


def is_alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def url_without_password(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)
