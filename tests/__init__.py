"""kegnet test suite."""
