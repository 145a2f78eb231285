"""The main process's side of the analysis workers: the pool, pipes, results into metrics and the drill-down."""
