"""The fixtures every test directory may ask for live in tests/fixtures/, one plugin module
per subject, loaded here once for the whole suite (pytest reads ``pytest_plugins`` only from
this top-level conftest). A directory's own conftest.py keeps what only its tests use, and may
override one of these for its tests (tests/e2e's quicker ``master``).

- tests/fixtures/masters.py: real masters (tests/masters.py)
- tests/fixtures/docker.py: the local Docker engine, the base image, an empty second engine
- tests/fixtures/cluster.py: real client daemons and the end-to-end images (tests/e2e/cluster.py)
"""

pytest_plugins = [
    "tests.fixtures.masters",
    "tests.fixtures.docker",
    "tests.fixtures.cluster",
]
