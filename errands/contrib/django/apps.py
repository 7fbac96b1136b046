"""The Django app, installed for its management command `errands_worker`."""

from django.apps import AppConfig


class ErrandsConfig(AppConfig):
    name = "errands.contrib.django"
    label = "errands"  # the last part of the name, "django", would read as Django's own
    verbose_name = "errands"
