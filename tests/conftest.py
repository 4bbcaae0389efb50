pytest_plugins = ["tests.fixtures.daemon"]
