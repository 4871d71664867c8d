from django.urls import path

from ingestion.apis import source_status_list_fast

urlpatterns = [
    path("sources/", source_status_list_fast, name="source-status-list"),
]
