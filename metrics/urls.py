from django.urls import path, re_path

from metrics import apis
from metrics.selectors import FORAGE_CHARTS

urlpatterns = [
    path("countries/<str:code>/", apis.CountryDetailApi.as_view(), name="country-detail"),
    path("variables/<str:name>/distribution/", apis.VariableDistributionApi.as_view(), name="variable-distribution"),
]

# The URLs dashboards poll every second. pisa_site/urls.py mounts them FIRST, so that resolving them does not walk
# past the admin's and the other apps' patterns.
polled_urlpatterns = [
    path("api/v1/metrics/", apis.metrics_fast, name="metrics"),
    path("api/v1/countries/", apis.country_list_fast, name="country-list"),
    path("api/v1/analyses/", apis.analyses_fast, name="analyses"),  # the Explore panel polls it
    path("api/v1/stream/", apis.metrics_stream, name="stream"),
    *(re_path(rf"^api/forage/{chart}/?$", apis.forage_fast(chart), name=f"forage-{chart}")
      for chart in FORAGE_CHARTS),
]
