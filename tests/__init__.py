"""The test suite, a package so that test files share ``tests.helpers``."""
