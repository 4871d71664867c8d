from django.urls import path, re_path

from metrics import apis
from metrics.selectors import FORAGE_CHARTS

urlpatterns = [
    path("metrics/", apis.MetricsApi.as_view(), name="metrics"),
    path("countries/", apis.CountryListApi.as_view(), name="country-list"),
    path("countries/<str:code>/", apis.CountryDetailApi.as_view(), name="country-detail"),
    path("variables/<str:name>/distribution/", apis.VariableDistributionApi.as_view(), name="variable-distribution"),
]

# Mounted under /api/forage/ by pisa_site/urls.py.
forage_urlpatterns = [
    re_path(rf"^{chart}/?$", apis.ForageApi.as_view(chart=chart), name=f"forage-{chart}") for chart in FORAGE_CHARTS
]
