"""The Celery application. Configuration lives in settings.py (CELERY_* names), tasks in each app's tasks.py."""

import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

from pisa_site.logs import handlers_hide_passwords

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pisa_site.settings")

app = Celery("pisa_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _logs_hide_passwords(logger, **kwargs):
    """The worker and beat replace Django's logging with their own handlers: those hide URL passwords too."""
    handlers_hide_passwords(logger)
