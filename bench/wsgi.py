"""The project's WSGI app plus one bench-only URL, /bench/constant/, answering constant bytes: the baseline the API
is compared with under the very same server, settings and middleware."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pisa_site.settings")

from django.conf import settings  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

from pisa_site.edge import edge_cache  # noqa: E402
from pisa_site.shedding import shed_when_queued_too_long  # noqa: E402

settings.ROOT_URLCONF = "bench.urls"
# bench.api and bench.analysis measure Django's path for each request, as their figures always have: no edge.
without_edge = shed_when_queued_too_long(get_wsgi_application())
application = edge_cache(without_edge)  # as pisa_site/wsgi.py
