"""A standing federation (docs/jobs.md): one coordinator process that stays up, sites that stay connected, and jobs
that operators submit, watch and stop. A job is the same run `fedtl server` makes, in its own run folder."""
