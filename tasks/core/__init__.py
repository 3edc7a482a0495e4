"""The pure core: models, rules and computations, no IO (see docs/architecture.md)."""
