"""The transform engine: bronze -> staging -> silver -> gold, incremental by default.

One module per stage, each a set of plain functions over a :class:`~tasks.connectors.lake.Lake`
(the Prefect tasks in :mod:`tasks.transform` are one-line wrappers over them, and the benchmark
calls them directly):

- :mod:`tasks.engine.staging` - bronze -> ``silver/staged_<role>``: only rows bronze gained or
  lost are normalised and checked (a role restaged whole goes a chunk of bronze at a time,
  :mod:`tasks.engine.staging_full`); :mod:`tasks.engine.roles` runs it per role (a *unit*,
  which a task runner may run in another process) and combines the roles' reports;
- :mod:`tasks.engine.silver` - staging -> ``silver/contacts``, ``silver/orders``,
  ``silver/events`` for the people, orders and events a change touches
  (:mod:`tasks.engine.scope`), the rows built by :mod:`tasks.engine.silver_rows`; a full build
  in buckets of people computes the buckets side by side (a *unit* each) and commits them in
  order (:mod:`tasks.engine.silver_buckets`);
- :mod:`tasks.engine.consent` - the consent ledger ``ops/consent_events``: what the silver
  build appends (source records, platform suppressions, erasures) and the consent it reads back;
- :mod:`tasks.engine.gold` - silver -> ``gold/customer_features`` and
  ``gold/audience_members`` for the affected contacts (a full build in buckets: two passes of
  units, committed in bucket order);
- :mod:`tasks.engine.state` - what the last build consumed, and whether this one is full,
  incremental or has nothing to do;

and their helpers: :mod:`tasks.engine.buckets` (a full silver or gold build one bucket of
people at a time, and what crosses buckets), :mod:`tasks.engine.checks` (contracts and
quarantine),
:mod:`tasks.engine.delta` (pinned reads, writing only what changed) and
:mod:`tasks.engine.reports` (what each stage reports). ``full_refresh`` rebuilds everything and
produces the same tables; ``docs/architecture.md`` describes the whole design.
"""
