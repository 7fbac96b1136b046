"""The project's manage.py, as `django-admin startproject` writes it, for the worker tests."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.contrib_django.project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
