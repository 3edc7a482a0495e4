"""The sample sources behind :mod:`infra.sandbox.generate`, one module each (CRM, orders,
events, enrichment) plus what they share; ``generate`` draws them from one seeded random stream
in a fixed order and writes the files."""
