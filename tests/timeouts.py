"""Named timeouts for polling tests (never bare sleeps)."""

SHORT = 15.0  # something the operator does on its own within a reconcile or two
MEDIUM = 45.0  # a simulated run end to end
LONG = 180.0  # many resources, or restarts
