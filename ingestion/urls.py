from django.urls import path

from ingestion.apis import SourceStatusListApi

urlpatterns = [
    path("sources/", SourceStatusListApi.as_view(), name="source-status-list"),
]
