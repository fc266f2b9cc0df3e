"""The coordinator's own settings, one module per section of its command line (run, model, data, rounds, training,
transport). Features with packages of their own keep theirs there: aggregation and each rule's knobs
(server/strategies/), secure aggregation (server/secagg/settings.py), client-level DP (server/strategies/dp_settings.py),
observability (server/observe/settings.py). server/flags.py assembles them; server/config.py checks what spans them."""
