"""Development helpers: never imported by the serving path (handler, worker, tasks, server).

`tiny_models` builds offline random-weight checkpoints for tests, smoke runs and benchmarks (its
registry and command line); `tiny/` holds the builders by family.
"""
