"""The Celery application. Configuration lives in settings.py (CELERY_* names), tasks in each app's tasks.py."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pisa_site.settings")

app = Celery("pisa_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
