"""Settings come from the environment, with safe defaults and clear refusals."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


SUMMARY = (
    "import django, json; from django.conf import settings; django.setup(); "
    "print(json.dumps({'debug': settings.DEBUG, 'broker': settings.CELERY_BROKER_URL, "
    "'db': settings.DATABASES['default']['NAME'], 'hosts': settings.ALLOWED_HOSTS}))"
)


def load_settings(script: str = SUMMARY, **env: str) -> subprocess.CompletedProcess:
    """Import the settings module in a fresh interpreter with exactly this environment."""
    base = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "pisa_site.settings", "PISA_HOME": "/nonexistent-pisa"}
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**base, **env}, capture_output=True, text=True)


URLS = {"DATABASE_URL": "postgresql://u@db.example:5432/warehouse", "REDIS_URL": "redis://cache.example:6379/0"}
STRONG_KEY = "k3y-" + "".join(chr(ord("a") + i % 26) for i in range(60))


def test_secret_key_is_required_when_debug_is_off():
    result = load_settings(**URLS)
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


@pytest.mark.parametrize("key, why", [
    ("s3cret", "short"),
    ("x" * 60, "few distinct characters"),
    ("django-insecure-" + "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ", "Django's placeholder prefix"),
])
def test_a_weak_secret_key_is_refused_when_debug_is_off(key, why):
    result = load_settings(**URLS, SECRET_KEY=key)
    assert result.returncode != 0, why
    assert "SECRET_KEY must be at least 50 random characters when DEBUG is off" in result.stderr


def test_with_debug_on_a_missing_key_is_replaced_by_a_local_one():
    assert load_settings(**URLS, DEBUG="1").returncode == 0


def test_with_debug_off_the_site_is_https_only_by_default():
    script = ("import django, json; from django.conf import settings as s; django.setup(); print(json.dumps("
              "[s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE]))")
    result = load_settings(script, **URLS, SECRET_KEY=STRONG_KEY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[true, 31536000, true, true]"


def test_debug_is_off_unless_set():
    result = load_settings(**URLS, SECRET_KEY=STRONG_KEY)
    assert result.returncode == 0, result.stderr
    assert '"debug": false' in result.stdout


def test_broker_defaults_to_the_cache_redis_one_database_up():
    result = load_settings(**URLS, SECRET_KEY=STRONG_KEY)
    assert '"broker": "redis://cache.example:6379/1"' in result.stdout


def test_broker_url_can_be_set_on_its_own():
    result = load_settings(**URLS, SECRET_KEY=STRONG_KEY, CELERY_BROKER_URL="redis://broker.example:6379/5")
    assert '"broker": "redis://broker.example:6379/5"' in result.stdout


def test_allowed_hosts_come_from_the_environment():
    result = load_settings(**URLS, SECRET_KEY=STRONG_KEY, ALLOWED_HOSTS="pisa.example.org, api.example.org")
    assert '"hosts": ["pisa.example.org", "api.example.org"]' in result.stdout


@pytest.mark.parametrize("missing", ["DATABASE_URL", "REDIS_URL"])
def test_missing_service_url_without_embedded_services_is_a_clear_error(missing):
    env = {k: v for k, v in URLS.items() if k != missing}
    result = load_settings(**env, SECRET_KEY=STRONG_KEY)
    assert result.returncode != 0
    assert f"{missing} is not set and the embedded" in result.stderr


def test_the_warehouse_must_be_postgresql():
    result = load_settings(**{**URLS, "DATABASE_URL": "sqlite:///warehouse.db"}, SECRET_KEY=STRONG_KEY)
    assert result.returncode != 0
    assert "The warehouse must be PostgreSQL" in result.stderr


def test_under_ci_a_test_whose_shared_data_is_missing_fails_instead_of_skipping(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT, subprocess_env

    probe = tmp_path / "test_probe.py"
    probe.write_text("from tests.conftest import shared_path\n\n"
                     "def test_needs_data():\n    shared_path('pisa2018', 'no-such-file.csv')\n")
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
           "--rootdir", str(ROOT), str(probe)]
    skipped = subprocess.run(run, cwd=ROOT, env=subprocess_env(CI=""), capture_output=True, text=True)
    failed = subprocess.run(run, cwd=ROOT, env=subprocess_env(CI="true"), capture_output=True, text=True)
    assert "1 skipped" in skipped.stdout, skipped.stdout[-500:]
    assert failed.returncode == 1 and "shared reference data not found" in failed.stdout, failed.stdout[-500:]


@pytest.mark.parametrize("given, expected", [(None, "1"), ("3", "3")])
def test_each_process_multiplies_on_one_blas_thread_unless_told_otherwise(given, expected):
    """Many worker processes share few cores: a BLAS thread per core in each of them would only spin."""
    env = {} if given is None else {"OPENBLAS_NUM_THREADS": given}
    result = load_settings("import pisa_site, os; print(os.environ['OPENBLAS_NUM_THREADS'])", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


WAREHOUSE_HOST = ("import django; from django.conf import settings; django.setup(); "
                  "print(settings.DATABASES['default']['HOST'])")


def test_a_local_warehouse_is_reached_through_its_unix_socket_when_the_socket_is_there(tmp_path):
    local = {**URLS, "DATABASE_URL": "postgresql://u@127.0.0.1:5433/warehouse", "DEBUG": "1"}
    without = load_settings(WAREHOUSE_HOST, **local, DATABASE_SOCKET_DIR=str(tmp_path))
    (tmp_path / ".s.PGSQL.5433").touch()
    with_socket = load_settings(WAREHOUSE_HOST, **local, DATABASE_SOCKET_DIR=str(tmp_path))
    remote = load_settings(WAREHOUSE_HOST, **URLS, DEBUG="1", DATABASE_SOCKET_DIR=str(tmp_path))
    assert [without.stdout.strip(), with_socket.stdout.strip(), remote.stdout.strip()] == [
        "127.0.0.1", str(tmp_path), "db.example"], (without.stderr, with_socket.stderr, remote.stderr)
