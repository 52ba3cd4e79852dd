"""Built-in filtering scores (DESIGN: `deft_filter_score`)."""

from deft_plugin.hookspecs import hookimpl


def delta(r_chosen, r_rejected):
    """dR = R(x, y+) - R(x, y-): the differential distribution reward."""
    return r_chosen - r_rejected


def chosen(r_chosen, r_rejected):
    """R(x, y+) alone."""
    return r_chosen


@hookimpl
def deft_score_variants():
    return {"delta": delta, "chosen": chosen}
