"""The Celery application. Configuration lives in settings.py (CELERY_* names), tasks in each app's tasks.py."""

import faulthandler
import gc
import os
import signal
import sys

from celery import Celery
from celery.signals import (after_setup_logger, after_setup_task_logger, beat_init, task_postrun, task_prerun,
                            worker_init, worker_process_init)

from pisa_site.broker import use_bounded_transport
from pisa_site.logs import handlers_hide_passwords

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pisa_site.settings")
use_bounded_transport()  # before any broker connection: redis:// is kombu's transport with bounded pub/sub reads

app = Celery("pisa_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _logs_hide_passwords(logger, **kwargs):
    """The worker and beat replace Django's logging with their own handlers: those hide URL passwords too."""
    handlers_hide_passwords(logger)


# `kill -USR2 <pid>` of a worker, one of its pool processes or beat writes the stack of every thread of that process
# to its log (stderr), without stopping it: what a process that is alive but doing nothing waits on. Written from C,
# so it works even when Python code cannot run. (Celery's own SIGUSR1 does the same for a worker's main process only,
# through Python code.) Registered in Celery's processes alone: gunicorn uses SIGUSR2 for itself.
STACK_DUMP_SIGNAL = signal.SIGUSR2


@worker_init.connect
@beat_init.connect
@worker_process_init.connect
def _dump_stacks_on_signal(**kwargs):
    faulthandler.register(STACK_DUMP_SIGNAL, file=sys.__stderr__, all_threads=True)


@worker_process_init.connect
def _freeze_what_the_pool_process_inherits(**kwargs):
    """A pool process inherits every object of the worker (Django, Celery, NumPy, Arrow, ...: a few hundred thousand)
    and never frees them. Frozen, they are left out of the cyclic garbage collector's full collections, which
    otherwise walk them all every few dozen batches (0.1-0.25 s each, measured on a backfill) and, by touching
    their pages, copy memory the process could share with its parent."""
    gc.freeze()


@task_prerun.connect
@task_postrun.connect
def _keep_healthy_database_connections(sender=None, **kwargs):
    """Between tasks, as Django does between requests: close the warehouse connection only if it is broken, left in a
    transaction, or older than DB_CONN_MAX_AGE (CELERY_DB_REUSE_MAX in settings.py says why Celery's own rule is off).
    Not around a task run eagerly (`apply()`), which runs inside its caller's work and transaction, as Celery's own
    rule does not either."""
    from django.db import close_old_connections

    if sender is not None and getattr(sender.request, "is_eager", False):
        return
    close_old_connections()
