"""Warnings a run owes its user, in words: an eval set drawn from too few documents, and a cell
whose dictionary is mostly dead. Each check returns the message (or None); the caller prints it
with ``bench.logs.note``, so it reaches the terminal and ``run.log`` alike.
"""
from __future__ import annotations

# Standard errors clustered by document rest on G - 1 degrees of freedom for G documents; an SE
# estimated from G - 1 degrees of freedom is itself uncertain by about 1 / sqrt(2 (G - 1)):
# +-16% at G = 20, +-35% at G = 5. Below 20 documents the error bars deserve a word.
MIN_DOCUMENTS = 20

# More than half the units never firing on the eval tokens means the layer works as a dictionary
# of less than half its width: a comparison "at matched parameters" then compares it at a size
# it does not use. Smoke budgets reach this for several methods at small K; a paper run should not.
DEAD_FRACTION_LIMIT = 0.5

# A unit firing at the average rate is expected to fire eval_tokens * L0 / units times in the eval
# window; below this many, "never fired" cannot tell a dead unit from a rare one.
MIN_EXPECTED_FIRINGS = 5


def few_documents_warning(what: str, n_sequences: int, n_documents: int, flag: str) -> str | None:
    """A line when the tokens of the ``what`` sequences come from fewer than MIN_DOCUMENTS documents."""
    if n_documents >= MIN_DOCUMENTS:
        return None
    return (f"warning: the {n_sequences:,} {what} eval sequences come from only {n_documents} document"
            f"{'' if n_documents == 1 else 's'}; standard errors are clustered by document, so they are "
            f"honest but rest on at most {max(n_documents - 1, 0)} degrees of freedom. Raise {flag} or use a "
            f"corpus with more documents for tighter ones")


def dead_units_warning(row: dict) -> str | None:
    """A line when a finished cell's dead fraction exceeds DEAD_FRACTION_LIMIT, with the remedies."""
    dead = row.get("dead_fraction")
    if row.get("status", "ok") != "ok" or dead is None or not dead > DEAD_FRACTION_LIMIT:
        return None
    units, tokens, l0 = row.get("n_units"), row.get("eval_tokens"), row.get("l0")
    size = f" of its {units:,} units" if units else " of its units"
    message = (f"warning: {row.get('method')} K={row.get('k')}: {dead:.0%}{size} never fired on the eval tokens, "
               f"so it works as a much smaller layer. Remedies: the auxiliary dead-unit loss (--aux-k-coef), "
               f"a learning rate tuned per method (`bench tune`), or more training tokens (--tokens)")
    if units and tokens and l0 and tokens * l0 / units < MIN_EXPECTED_FIRINGS:
        message += (f". The eval window is short for this width (a unit firing at the average rate would fire "
                    f"{tokens * l0 / units:.1f} times in it): raise --eval-tokens to tell dead units from rare ones")
    return message
