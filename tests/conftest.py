pytest_plugins = ["tests.fixtures.daemon", "tests.fixtures.services"]
