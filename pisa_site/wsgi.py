import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pisa_site.settings")

from pisa_site.edge import edge_cache  # noqa: E402 (needs the settings module)
from pisa_site.shedding import shed_when_queued_too_long  # noqa: E402

# Kept answers first (they take no turn in Django), then the gate, then Django.
application = edge_cache(shed_when_queued_too_long(get_wsgi_application()))
