"""The stage graph: which stage reads which artifact, what makes it stale, rounds, and the plan make reads."""
