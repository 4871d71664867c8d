from django.apps import AppConfig


class IngestionConfig(AppConfig):
    name = "ingestion"

    def ready(self) -> None:
        from ingestion.apis import statuses_pushed
        from ingestion.selectors import countries_with_stale_figures
        from pisa_site import stream
        from pisa_site.health import stale_figures_source_register

        stale_figures_source_register(countries_with_stale_figures)
        stream.push_register(stream.SOURCES, statuses_pushed)
