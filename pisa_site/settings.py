"""PISA Live settings: one module, driven by environment variables (see the table in README.md)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from pisa_site.embedded import postgres_socket
from pisa_site.home import BASE_DIR, pisa_home


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value else default
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {value!r}") from exc


PISA_HOME = pisa_home()
# Reference data (codebook, student sample, published means) shipped beside the checkout, never copied into it.
PISA_SHARED_DIR = Path(os.environ.get("PISA_SHARED_DIR") or BASE_DIR.parent / "shared")
# Reference data that ships with the product (`manage.py package_reference_data` makes them from PISA_SHARED_DIR).
SHIPPED_CODEBOOK_PATH = BASE_DIR / "codebook" / "data" / "pisa2018_codebook.csv.gz"
SHIPPED_COUNTRY_MEANS_PATH = BASE_DIR / "simulator" / "data" / "oecd_2018_country_means.csv"
PISA_CODEBOOK_PATH = Path(os.environ.get("PISA_CODEBOOK_PATH") or SHIPPED_CODEBOOK_PATH)
PISA_COUNTRY_MEANS_PATH = Path(os.environ.get("PISA_COUNTRY_MEANS_PATH") or SHIPPED_COUNTRY_MEANS_PATH)

# Open analyses (docs/analysis.md). Means, SDs, shares, levels, correlations and slopes are folded by every refresh;
# percentiles and national quarters are recomputed at most every ANALYSIS_RECOMPUTE_SECONDS while their country
# changes. An analysis is kept ANALYSIS_KEEP_SECONDS after it was last asked for, and at most ANALYSIS_MAX_REGISTERED
# of them (the least recently asked go first: each costs every refresh of its countries a fold). A country's part is
# computed inside the request (instead of by the analysis worker, with a 202) when the countries still to compute
# hold at most ANALYSIS_INLINE_MAX_STUDENTS students.
ANALYSIS_RECOMPUTE_SECONDS = float(os.environ.get("ANALYSIS_RECOMPUTE_SECONDS", "1"))
ANALYSIS_KEEP_SECONDS = int(os.environ.get("ANALYSIS_KEEP_SECONDS", "3600"))
ANALYSIS_MAX_REGISTERED = int(os.environ.get("ANALYSIS_MAX_REGISTERED", "200"))
ANALYSIS_INLINE_MAX_STUDENTS = int(os.environ.get("ANALYSIS_INLINE_MAX_STUDENTS", "20000"))

# A management command or test run started outside `make run` finds embedded servers that are already up. Only then
# is the development launcher imported: a deployment gives both URLs.
if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
    from pisa_site import embedded

    for _name, _value in embedded.environment_for_running_services(PISA_HOME).items():
        os.environ.setdefault(_name, _value)

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
# What `manage.py check --deploy` calls a strong key (security.W009), required rather than warned about.
SECRET_KEY_MIN_LENGTH, SECRET_KEY_MIN_UNIQUE_CHARACTERS = 50, 5
if not DEBUG:
    if not SECRET_KEY:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (make run and make test set DEBUG=1 for the local stack)."
        )
    if (len(SECRET_KEY) < SECRET_KEY_MIN_LENGTH or len(set(SECRET_KEY)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS
            or SECRET_KEY.startswith("django-insecure-")):
        raise ImproperlyConfigured(
            f"SECRET_KEY must be at least {SECRET_KEY_MIN_LENGTH} random characters when DEBUG is off; make one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`."
        )
elif not SECRET_KEY:
    SECRET_KEY = "insecure-local-development-key-only-used-with-DEBUG-on"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's assets from a package: the API docs work offline
    "pisa_site",
    "codebook",
    "ingestion",
    "metrics",
    "simulator",
    "dashboard",
    "operations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so that it sees the views' exceptions first: Redis or the database down is a JSON 503 under /api/.
    "pisa_site.outages.ServiceOutageMiddleware",
]

ROOT_URLCONF = "pisa_site.urls"
WSGI_APPLICATION = "pisa_site.wsgi.application"
ASGI_APPLICATION = "pisa_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Warehouse -------------------------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if not DATABASE_URL:
    raise ImproperlyConfigured(
        "DATABASE_URL is not set and the embedded PostgreSQL is not running. Use `make run` / `make test`, "
        "or start the embedded services with `python -m pisa_site.embedded run -- <command>`."
    )
# Persistent connections (web requests and Celery tasks reuse them), checked with a round trip before their first use
# in each request or task, so one broken by a PostgreSQL restart is replaced instead of failing that request or task.
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
                                              conn_health_checks=True)}
DATABASES["default"].setdefault("OPTIONS", {})["application_name"] = "pisa-live"
# A load's staging table (ingestion/load.py) holds a batch of 1,000 rows of ~5 KB: in PostgreSQL's default 8 MB of
# temporary buffers it spilled to disk and each of the load's statements read it back (EXPLAIN: local read=985
# written=942 per statement). Allocated only by sessions that use temporary tables, i.e. the ingest workers.
_db_options = DATABASES["default"]["OPTIONS"]
_db_options["options"] = f"{_db_options.get('options', '')} -c temp_buffers=32MB".strip()
# A warehouse on this host through its Unix socket rather than TCP over loopback: a bulk read (an analysis reads a
# country's ~30 MB of packed values) costs ~10 % less CPU, PostgreSQL's and ours (docs/benchmarks.md).
# Only when the socket of DATABASE_URL's own port is there, so a leftover variable never redirects the warehouse.
DATABASE_SOCKET_DIR = os.environ.get("DATABASE_SOCKET_DIR", "")
if (DATABASE_SOCKET_DIR and DATABASES["default"]["HOST"] in ("127.0.0.1", "localhost")
        and postgres_socket(DATABASE_SOCKET_DIR, DATABASES["default"]["PORT"] or 5432).exists()):
    DATABASES["default"]["HOST"] = DATABASE_SOCKET_DIR
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("The warehouse must be PostgreSQL (DATABASE_URL=postgresql://...).")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: metrics cache and Celery broker ---------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
if not REDIS_URL:
    raise ImproperlyConfigured(
        "REDIS_URL is not set and the embedded Redis is not running. Use `make run` / `make test`."
    )


def _redis_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


# The broker defaults to the same Redis server as the cache, one database number up, so that flushing the cache
# can never drop a queued task.
_cache_db = int(urlsplit(REDIS_URL).path.strip("/") or 0)
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or _redis_db(REDIS_URL, _cache_db + 1)

# Every Redis client (cache, locks, broker) gives up on a dead or half-open connection after this long, rather than
# waiting forever; the caller's retry policy takes it from there.
REDIS_SOCKET_TIMEOUT_SECONDS = float(os.environ.get("REDIS_SOCKET_TIMEOUT_SECONDS", "5"))
CACHES = {
    "default": {
        "BACKEND": "pisa_site.cache.ReusingRedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "pisa",
        "TIMEOUT": 300,
        "OPTIONS": {"socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
                    "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_SECONDS},
    }
}

# --- PISA reference data and the source simulator ------------------------------------------------------------
# The codebook is loaded by `make run` (manage.py bootstrap) when the file exists and the codebook is still empty.
# Off, `manage.py simulate` (the Procfile's `simulator` process) says so and idles instead of feeding the sources.
SIMULATOR_ENABLED = env_bool("SIMULATOR_ENABLED", True)

# --- Auth, i18n, static ----------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = PISA_HOME / "static"
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    # plotly.js and the world map's geometry, straight from their installed PyPI packages (dashboard/finders.py)
    "dashboard.finders.PackageAssetFinder",
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the apps' static folders in development, so no collectstatic is needed to see a change.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# --- Security (what `manage.py check --deploy` asks for, when not debugging) -----------------------------------
# With DEBUG off the site is HTTPS-only by default: it expects a TLS-terminating proxy in front that sets
# X-Forwarded-Proto (docs/security.md). A local trial over plain HTTP turns these off explicitly, and then
# `check --deploy` says so.
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS")
CORS_URLS_REGEX = r"^/api/.*$"

# --- REST API ---------------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "pisa_site.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "PISA Live API",
    "DESCRIPTION": "Live PISA 2018 statistics computed the OECD way (weights, replicate weights, plausible values).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The metrics documents are described as JSON schemas (metrics/openapi.py), added as components here.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "pisa_site.openapi.components_append"],
}

# --- Celery -----------------------------------------------------------------------------------------------------
# Every value below is set on purpose; see docs/ARCHITECTURE.md ("Task delivery guarantees").
CELERY_RESULT_BACKEND = None  # Tasks write their results to the warehouse/Redis themselves; nobody waits on them.
CELERY_TASK_IGNORE_RESULT = True
# JSON only: a task receives ids and codes, never pickled objects a compromised broker could turn into code.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
# Acknowledge after the task ran, so a worker that dies mid-task leaves the message to be redelivered; safe because
# every task is idempotent (upserts and recomputations).
CELERY_TASK_ACKS_LATE = True
# ...and when the child process is killed (SIGKILL, OOM) the message is requeued at once rather than acknowledged.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message reserved per process: a slow source cannot hold a backlog of other sources' work hostage.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# No task may run forever: the soft limit raises inside the task (it rolls back), the hard limit kills the child.
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 90)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 120)
# Redis redelivers an unacknowledged message after the visibility timeout. It must exceed the hard time limit (plus
# the time a message may wait reserved or in a retry countdown), or a long task would run twice at once.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 600),
    # Survive a Redis restart without a worker restart. Without a socket timeout, a worker whose event loop reads its
    # remote-control (pub/sub) socket after a Redis restart can block in that read forever, alive but consuming
    # nothing (celery 5.7, kombu 5.7; celery/celery#2606). With one, the read fails
    # after REDIS_SOCKET_TIMEOUT_SECONDS, redis-py reconnects and subscribes again, and the worker carries on.
    # No broker command legitimately blocks that long: kombu's BRPOP waits 1 s and is read only once readable.
    "socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
    "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
    "socket_keepalive": True,
    "retry_on_timeout": True,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# redis:// is kombu's Redis transport with pub/sub reads that cannot wait forever (pisa_site/broker.py, installed by
# pisa_site/celery.py): redis-py 8 turns the socket timeout above off for them, and a worker stopped fetching tasks
# for good after a Redis restart.
# Celery's consumer, minus a crash on reconnecting after a Redis restart with tasks in flight (see the module).
CELERY_WORKER_CONSUMER = "pisa_site.worker_consumer:Consumer"
# Keep a worker's warehouse connection from one task to the next. Celery's Django fixup otherwise closes it before and
# after every task (celery 5.7 calls close() whatever CONN_MAX_AGE says), so each of the 20 syncs a second paid for a
# new PostgreSQL backend (fork, authentication, a cold catalog cache) and created its staging table again: measured
# in bench/ingest.py as one warehouse backend per sync. With this set the fixup closes only every 2 x this many task
# boundaries; in between, pisa_site/celery.py applies Django's own rule at each boundary (close a connection that is
# broken or older than DB_CONN_MAX_AGE), as Django does between requests.
CELERY_DB_REUSE_MAX = 500
# Flower needs task events to show tasks live, by name and arguments.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
# Three queues, so that metrics refreshes never wait behind a backfill or a distribution, and each scales on its own.
CELERY_TASK_DEFAULT_QUEUE = "ingestion"
CELERY_TASK_ROUTES = {
    "ingestion.*": {"queue": "ingestion"},
    # Heavy on-demand reads (a variable's distribution): their own queue and worker, so refreshes never wait.
    "metrics.distribution_*": {"queue": "analysis"},
    "metrics.*": {"queue": "metrics"},
}
INGEST_FAN_OUT_SECONDS = float(os.environ.get("INGEST_FAN_OUT_SECONDS", "1"))
INGEST_LOOKBACK_SECONDS = env_int("INGEST_LOOKBACK_SECONDS", 30)
INGEST_RECONCILE_SECONDS = env_int("INGEST_RECONCILE_SECONDS", 60)
INGEST_RECONCILE_MAX_SECONDS = env_int("INGEST_RECONCILE_MAX_SECONDS", 3600)
# A sync's Redis lock: renewed after every batch, so a source whose worker died (or lost Redis) is free within this.
INGEST_SYNC_LOCK_SECONDS = env_int("INGEST_SYNC_LOCK_SECONDS", 30)
# How long one sync may keep loading a backlog before it leaves the rest to the next (ingestion/tasks.py).
INGEST_SYNC_BUDGET_SECONDS = float(os.environ.get("INGEST_SYNC_BUDGET_SECONDS", "10"))
# How often the source watcher (ingestion/watch.py, `manage.py watch_sources`) looks at each source's largest id: a
# new row's sync starts about this soon instead of at the next fan-out tick. One index probe per source each time.
WATCH_PROBE_SECONDS = float(os.environ.get("WATCH_PROBE_SECONDS", "0.05"))
# How old each web process's rendering of GET /api/v1/sources/ may be (ingestion/apis.py): every dashboard polls it.
INGEST_STATUS_CACHE_SECONDS = float(os.environ.get("INGEST_STATUS_CACHE_SECONDS", "0.5"))
METRICS_PERCENTILES_SECONDS = env_int("METRICS_PERCENTILES_SECONDS", 30)
# How old each web process's snapshot of the metrics versions may be (metrics/cache.py): the bound on how long after a
# publish a 304 may still be sent for the old document. A small part of the one-second freshness budget.
METRICS_VERSIONS_CACHE_SECONDS = float(os.environ.get("METRICS_VERSIONS_CACHE_SECONDS", "0.1"))
# Overload (pisa_site/shedding.py): each web process runs WEB_ACTIVE_REQUESTS requests in Django at once, on WEB_THREADS
# threads (the Procfile gives granian the same number); a request that waited longer than WEB_SHED_QUEUE_MS for its
# turn, or found every thread but a few waiting, is answered 503 at once, with Retry-After between
# WEB_RETRY_AFTER_SECONDS and twice that (health and admin never are). 0: never shed.
WEB_THREADS = env_int("WEB_THREADS", 64)
WEB_ACTIVE_REQUESTS = env_int("WEB_ACTIVE_REQUESTS", 8)
WEB_SHED_QUEUE_MS = env_int("WEB_SHED_QUEUE_MS", 500)
WEB_RETRY_AFTER_SECONDS = env_int("WEB_RETRY_AFTER_SECONDS", 5)
# The most viewers one web process keeps on GET /api/v1/stream/ (pisa_site/stream.py); beyond, it answers 503 with
# Retry-After and the dashboard polls. An open stream costs a few KB and an idle asyncio task.
STREAM_MAX_VIEWERS = env_int("STREAM_MAX_VIEWERS", 5000)
# Where browsers open the stream. STREAM_URL when a proxy serves it (e.g. "/api/v1/stream/" on the page's origin);
# else the page's host on STREAM_PORT, where `make run` and docker compose run the ASGI server; neither: no stream,
# the dashboard polls.
STREAM_URL = os.environ.get("STREAM_URL", "")
STREAM_PORT = env_int("STREAM_PORT", 0)
# The safety net for lost refresh messages (metrics/tasks.py refresh_overdue): how often it looks, and how long a
# country's changes may wait unfolded before it asks for a refresh again.
METRICS_SWEEP_SECONDS = float(os.environ.get("METRICS_SWEEP_SECONDS", "5"))
METRICS_OVERDUE_SECONDS = float(os.environ.get("METRICS_OVERDUE_SECONDS", "10"))
CELERY_BEAT_SCHEDULE = {
    # Every second: one sync task per due source. A late fan-out is worthless, so it expires before the next one.
    "ingestion-fan-out": {
        "task": "ingestion.fan_out",
        "schedule": INGEST_FAN_OUT_SECONDS,
        "options": {"expires": INGEST_FAN_OUT_SECONDS * 0.9},
    },
    "metrics-refresh-overdue": {
        "task": "metrics.refresh_overdue",
        "schedule": METRICS_SWEEP_SECONDS,
        "options": {"expires": METRICS_SWEEP_SECONDS * 0.9},
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(PISA_HOME / "celerybeat-schedule")
CELERY_TIMEZONE = TIME_ZONE

# --- Logging ----------------------------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Passwords written in URLs come out as *** whatever logs them (pisa_site/logs.py).
    "formatters": {"plain": {"()": "pisa_site.logs.PasswordHidingFormatter",
                             "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
