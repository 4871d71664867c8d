from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "metrics"

    def ready(self) -> None:
        from ingestion.warehouse import country_changed
        from metrics.scheduling import country_changed_received
        from metrics.cache import versions_forget
        from metrics.selectors import metrics_pushed
        from pisa_site import edge, stream

        country_changed.connect(country_changed_received, dispatch_uid="metrics.refresh")
        stream.push_register(stream.METRICS, metrics_pushed)
        edge.on_change_heard(lambda _country: versions_forget())
