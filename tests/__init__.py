"""The test suite. Its support code is imported as packages (tests.cluster, tests.support) from the root."""
