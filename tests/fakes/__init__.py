"""Stand-ins for external services, speaking their real wire formats, for
tests that exercise the real client libraries."""
