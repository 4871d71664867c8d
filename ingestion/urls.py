from django.urls import path

from ingestion.apis import QuarantinedRowDetailApi, QuarantinedRowListApi, source_status_list_fast

urlpatterns = [
    path("sources/", source_status_list_fast, name="source-status-list"),
    path("sources/<str:code>/quarantine/", QuarantinedRowListApi.as_view(), name="source-quarantine-list"),
    # <str:...>, not <int:...>: the view answers an id that is not a number with its JSON 404, not Django's HTML one.
    path("sources/<str:code>/quarantine/<str:source_row_id>/", QuarantinedRowDetailApi.as_view(),
         name="source-quarantine-detail"),
]
