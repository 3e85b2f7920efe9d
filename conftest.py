"""Project-wide pytest setup: hypothesis profiles. The edgebench plugin itself loads via its entry point."""

import os

from hypothesis import HealthCheck, settings

# The plugin tests drive pytest itself (pytester); pytest only takes pytest_plugins at the root.
pytest_plugins = ["pytester"]

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
