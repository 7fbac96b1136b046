"""A small Django project whose tasks run on errands, for the tests of errands.contrib.django."""
