from django.apps import AppConfig


class PisaSiteConfig(AppConfig):
    """Project-wide pieces that belong to no domain app: the health check and the `bootstrap` command."""

    name = "pisa_site"
    verbose_name = "PISA Live"
