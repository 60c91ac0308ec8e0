"""Everything about the deployed artifact: ATC command line and ATC-readiness checks."""
