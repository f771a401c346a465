"""Benchmarks: scripts that measure variants side by side, each run from the repository's root as
`python -m benchmarks.NAME` (README.md here lists them). They import stargate_lite as any user does; `shapes` holds
the models several of them share."""
