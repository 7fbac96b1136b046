"""A task module whose schedule names a time zone that does not exist, as a typo would."""

import errands


@errands.periodic("0 6 * * *", tz="Europe/Berln", name="nightly_report")
@errands.task
def report() -> None: ...
