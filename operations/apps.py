from django.apps import AppConfig


class OperationsConfig(AppConfig):
    """Proving the product on a running stack: `manage.py verify` (the warehouse against the sources) and `manage.py
    chaos` (faults done to the stack, then that proof). It drives the other apps and none of them imports it."""

    name = "operations"
