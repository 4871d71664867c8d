"""The embedded PostgreSQL and Redis are real servers whose data survives a restart."""

import psycopg2
import pytest
import redis

from pisa_site.embedded import EmbeddedServices, _pid_alive


@pytest.fixture
def services(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    started = EmbeddedServices(tmp_path / "home")
    yield started
    started.stop(quiet=True)


def test_start_exports_urls_for_both_servers_and_a_separate_broker_database(services):
    env = services.start(quiet=True)
    assert env["DATABASE_URL"] == f"postgresql://postgres@127.0.0.1:{services.postgres.port}/pisa"
    assert env["REDIS_URL"].endswith("/0")
    assert env["CELERY_BROKER_URL"].endswith("/1")
    with psycopg2.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("SHOW server_version")
        assert cur.fetchone()[0].split(".")[0].isdigit()
    assert redis.Redis.from_url(env["REDIS_URL"]).ping()


def test_the_warehouse_is_also_served_on_a_unix_socket_named_in_the_environment(services):
    env = services.start(quiet=True)
    assert env["DATABASE_SOCKET_DIR"] == str(services.postgres.data_dir)
    with psycopg2.connect(host=env["DATABASE_SOCKET_DIR"], port=services.postgres.port, user="postgres",
                          dbname="pisa") as conn, conn.cursor() as cur:
        cur.execute("SELECT inet_server_addr() IS NULL, current_setting('port')")  # no address: a Unix socket
        assert cur.fetchone() == (True, str(services.postgres.port))


def test_redis_never_evicts_keys_because_it_is_the_broker(services):
    env = services.start(quiet=True)
    policy = redis.Redis.from_url(env["REDIS_URL"]).config_get("maxmemory-policy")
    assert policy == {"maxmemory-policy": "noeviction"}


def test_data_survives_a_restart_on_the_same_ports(services):
    env = services.start(quiet=True)
    with psycopg2.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
    redis.Redis.from_url(env["REDIS_URL"]).set("kept", "still here")
    postgres_pid, redis_pid = services.postgres.pid(), services.redis.pid()

    services.stop(quiet=True)
    assert not _pid_alive(postgres_pid) and not _pid_alive(redis_pid)

    restarted_env = services.start(quiet=True)
    assert restarted_env["DATABASE_URL"] == env["DATABASE_URL"]
    with psycopg2.connect(restarted_env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT v FROM kept")
        assert cur.fetchone() == ("still here",)
    assert redis.Redis.from_url(restarted_env["REDIS_URL"]).get("kept") == b"still here"


def test_external_urls_replace_the_embedded_servers(services, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/0")
    assert services.start(quiet=True) == {"PISA_HOME": str(services.home)}
    assert services.postgres.pid() is None and services.redis.pid() is None


def test_stop_only_stops_what_it_started(services, tmp_path):
    services.start(quiet=True)
    second = EmbeddedServices(services.home)
    second.start(quiet=True)  # finds them running
    second.stop(quiet=True)
    assert services.postgres.is_running() and services.redis.is_running()
