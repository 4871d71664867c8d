import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pisa_site.settings")

from pisa_site.shedding import shed_when_queued_too_long  # noqa: E402 (needs the settings module)

application = shed_when_queued_too_long(get_wsgi_application())
