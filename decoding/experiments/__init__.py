"""One-command experiment recipes (issue 8): REAR on verifiable preferences, PrefEval implicit choice."""
