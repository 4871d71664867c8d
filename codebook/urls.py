from django.urls import path

from codebook.apis import VariableDetailApi, VariableListApi

urlpatterns = [
    path("codebook/variables/", VariableListApi.as_view(), name="codebook-variable-list"),
    path("codebook/variables/<str:name>/", VariableDetailApi.as_view(), name="codebook-variable-detail"),
]
