"""Local servers for the demo and the tests: install if missing, start, health-check, stop."""
