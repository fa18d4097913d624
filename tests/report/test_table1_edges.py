"""Table 1 when no test can run (issue 10, item 11): the Test column says why, not "Mann-Whitney U"."""
import math

import pandas as pd

from npc_msom.report.table1 import (MANN_WHITNEY, Comparison, Variable, continuous_test, make_table1,
                                    render_table1_html)


def test_continuous_test_without_a_test_says_why():
    r = continuous_test([], [1.0, 2.0])
    assert math.isnan(r.p_value) and r.test == "not tested (no values in one group)"    # was: Mann-Whitney U
    r = continuous_test([3.0, 3.0], [3.0, 3.0, 3.0])
    assert math.isnan(r.p_value) and r.test == "not tested (all values equal)"
    assert continuous_test([1.0, 2.0], [3.0, 4.0]).test == MANN_WHITNEY


def test_table1_row_with_an_empty_group():
    df = pd.DataFrame({"msom": [1, 1, 0, 0, 0], "hgb": [None, None, 130.0, 140.0, 150.0]})
    t = make_table1(df, [Variable("hgb", "continuous", "Hb (g/L)")],
                    [Comparison("msom", (1, 0), ("MSOM", "non-MSOM"))])
    row = t.iloc[0]
    assert row["Test (MSOM vs non-MSOM)"] == "not tested (no values in one group)"
    assert math.isnan(row["p (MSOM vs non-MSOM)"])
    html = render_table1_html(t)
    body = html.split("<tbody")[1].split("</tbody>")[0] if "<tbody" in html else html
    assert "not tested (no values in one group)" in body and "Mann" not in body
