"""``segments:`` of ``pipeline.yaml``: an audience as a restricted SQL predicate over features.

:class:`Segment` checks its predicate when it is built (:func:`check_segment_predicate`): the
text must parse in the restricted language of :mod:`tasks.core.predicates`, read only columns of
``gold/customer_features`` and evaluate to a boolean. :mod:`tasks.core.config` collects segments
into :class:`~tasks.core.config.PipelineConfig`.
"""

from __future__ import annotations

import polars as pl
from pydantic import Field, model_validator

from tasks.core.config_base import Model, Name
from tasks.core.feature_catalog import FEATURE_COLUMNS
from tasks.core.predicates import (
    FUNCTIONS,
    MAX_PREDICATE_CHARS,
    PredicateError,
    compile_predicate,
    predicate_columns,
)


class Segment(Model):
    """An audience: a SQL predicate over the columns of ``gold/customer_features``.

    The predicate is checked when the model is built (see :func:`check_segment_predicate`), so a
    ``Segment`` always holds a predicate in the restricted language of
    :mod:`tasks.core.predicates`; :meth:`expr` compiles it.
    """

    name: Name
    where: str = Field(
        max_length=MAX_PREDICATE_CHARS,
        description=(
            "SQL predicate over customer features, e.g. 'order_count >= 3'. Restricted to "
            "feature columns, literals, comparisons, AND/OR/NOT, IS [NOT] NULL, IN (...), "
            "BETWEEN, LIKE, arithmetic and the functions " + ", ".join(sorted(FUNCTIONS)) + "."
        ),
    )
    description: str = ""
    priority: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Makes the segment mutually exclusive with the other prioritised segments: a contact "
            "matching several lands only in the one with the lowest number (1 = first). "
            "Segments without a priority are independent of all others."
        ),
    )

    @model_validator(mode="after")
    def _predicate_is_allowed(self) -> Segment:
        check_segment_predicate(self)
        return self

    def expr(self) -> pl.Expr:
        """The predicate as a polars expression (null where a feature it reads is null)."""
        return compile_predicate(self.where, FEATURE_COLUMNS)


def predicate_columns_or_error(segment: Segment) -> set[str]:
    """The columns ``segment.where`` reads; ``ValueError`` naming the segment if it is not an
    allowed predicate."""
    try:
        return predicate_columns(segment.where)
    except PredicateError as exc:
        raise ValueError(
            f"segment {segment.name!r}: invalid predicate {segment.where!r}: {exc}"
        ) from exc


def check_segment_predicate(segment: Segment) -> None:
    """Fail with the segment's name if its predicate is outside the allowed language, reads an
    unknown column, or is not a boolean.

    The text is parsed by :mod:`tasks.core.predicates` first; polars only ever sees the canonical
    rendering of an allowed tree, never the user's text (its SQL layer would run table functions
    such as ``read_csv`` while merely building the expression).
    """
    unknown = sorted(predicate_columns_or_error(segment) - set(FEATURE_COLUMNS))
    if unknown:
        raise ValueError(
            f"segment {segment.name!r}: unknown column(s) {unknown} in {segment.where!r}; "
            f"available: {sorted(FEATURE_COLUMNS)}"
        )
    try:
        expr = compile_predicate(segment.where, FEATURE_COLUMNS)
    except PredicateError as exc:
        raise ValueError(
            f"segment {segment.name!r}: invalid predicate {segment.where!r}: {exc}"
        ) from exc
    except Exception as exc:  # polars rejected a rendering of an allowed tree
        raise ValueError(
            f"segment {segment.name!r}: invalid predicate {segment.where!r}: {exc}"
        ) from exc
    # One all-null row: evaluating (not only typing) the predicate catches comparisons polars
    # accepts in the schema but rejects on data, e.g. a string column against a number.
    row = pl.DataFrame([[None] * len(FEATURE_COLUMNS)], schema=FEATURE_COLUMNS, orient="row")
    try:
        result = row.lazy().select(expr.alias("_match")).collect().schema["_match"]
    except Exception as exc:
        raise ValueError(f"segment {segment.name!r}: predicate {segment.where!r}: {exc}") from exc
    if result != pl.Boolean:
        raise ValueError(
            f"segment {segment.name!r}: predicate {segment.where!r} is {result}, not a boolean"
        )
