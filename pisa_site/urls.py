from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from metrics.urls import polled_urlpatterns
from pisa_site.health import HealthView

admin.site.site_header = "PISA Live administration"
admin.site.site_title = "PISA Live"

urlpatterns = [
    *polled_urlpatterns,
    path("admin/", admin.site.urls),
    path("api/v1/health/", HealthView.as_view(), name="health"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("codebook.urls")),
    path("api/v1/", include("ingestion.urls")),
    path("api/v1/", include("metrics.urls")),
    path("", include("dashboard.urls")),
]
