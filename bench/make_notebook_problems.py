"""Writes codelm/evaluate/problems/notebook_basic.jsonl, the notebook benchmark, from the problems below.

Each problem is what a data scientist types under `%%codelm` in a Jupyter cell: a request in
natural language against small pandas DataFrames that the setup builds inline (format:
`codelm/notebook/problems.py`). The problems are our own, written for this benchmark, not taken
from DS-1000 or any other. About half name their columns so that the instruction alone does not
give them away (the instruction says "price", the frame has `sale_price_usd`), so that a model
shown the frames' schema has something to gain; about a third add an unrelated "distractor" frame.

Every `check(ns, result)` starts with the same small helpers (`_series`, `_close`, `_mapping`, ...).
Running the script rewrites the file deterministically and prints the counts by kind:

    .venv/bin/python bench/make_notebook_problems.py
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "codelm" / "evaluate" / "problems" / "notebook_basic.jsonl"

# Prepended to every check. Names start with `_` so that they do not look like the user's.
HELPERS = """\
import numpy as np
import pandas as pd


def _close(a, b, tol=1e-6):
    a, b = float(a), float(b)
    if np.isnan(b):
        return bool(np.isnan(a))
    return abs(a - b) <= tol * max(1.0, abs(b))


def _series(x, key=()):
    # The answer as a Series: a Series, a dict, or a DataFrame of one value column
    # (plus, if present, one of the key columns named in `key`, which becomes the index).
    if isinstance(key, str):
        key = (key,)
    if isinstance(x, dict):
        x = pd.Series(x)
    if isinstance(x, pd.DataFrame):
        for k in key:
            if k in x.columns and x.shape[1] == 2:
                x = x.set_index(k)
                break
        assert x.shape[1] == 1, f"expected one column of values, got {list(x.columns)}"
        x = x.iloc[:, 0]
    assert isinstance(x, pd.Series), f"expected a Series, got {type(x).__name__}"
    return x


def _mapping(x, expected, key=()):
    # `x` maps exactly the keys of `expected` to its values, in any order.
    s = _series(x, key)
    assert len(s) == len(expected), f"expected {len(expected)} entries, got {len(s)}"
    for k, v in expected.items():
        assert k in s.index, f"missing {k!r} in {list(s.index)}"
        assert _close(s[k], v), f"{k!r}: expected {v}, got {s[k]}"
    return s


def _values(x, expected):
    # The values of `x`, in order, are `expected` (NaN matches NaN).
    got = list(x)
    assert len(got) == len(expected), f"expected {len(expected)} values, got {len(got)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        assert _close(g, e), f"value {i}: expected {e}, got {g}"


def _frame(ns, name, n, *columns):
    # The user's frame `name` is still a DataFrame of its n rows, and has these columns.
    df = ns.get(name)
    assert isinstance(df, pd.DataFrame), f"{name} is no longer a DataFrame"
    assert len(df) == n, f"{name} should have {n} rows, has {len(df)}"
    for column in columns:
        assert column in df.columns, f"{name} has no column {column!r}: {list(df.columns)}"
    return df


def _names(x, column=None):
    # A collection of labels: a list or set, an Index, a Series of labels (or a Series of
    # numbers indexed by the labels), or a DataFrame with the labels in `column` or its index.
    if isinstance(x, pd.DataFrame):
        x = x[column] if column in x.columns else x.index.to_series()
    if isinstance(x, pd.Series) and pd.api.types.is_numeric_dtype(x.dtype):
        x = x.index
    assert isinstance(x, (list, tuple, set, pd.Series, pd.Index, np.ndarray)), type(x).__name__
    return sorted(str(v) for v in x)


def _axes():
    # The axes of the current figure that hold something.
    import matplotlib.pyplot as plt

    axes = [ax for ax in plt.gcf().axes if ax.lines or ax.patches or ax.collections]
    assert axes, "nothing was plotted"
    return axes


def _bars(ax):
    from matplotlib.patches import Rectangle

    return [p for p in ax.patches if type(p) is Rectangle]


def _line_with(ax, ys):
    # Whether `ax` has a line whose y data are `ys`.
    for line in ax.lines:
        got = np.asarray(line.get_ydata(), dtype=float)
        if len(got) == len(ys) and np.allclose(got, ys):
            return True
    return False
"""

PROBLEMS: list[dict] = []


def add(kind: str, setup: str, instruction: str, solution: str, test: str, *, distractor=False, hidden=False):
    """One problem. `kind`: pandas, matplotlib or numpy; `test`: the body of check(ns, result);
    `distractor`: the setup makes a frame the request does not need; `hidden`: the columns it
    needs are named so that the instruction alone does not give them away."""
    assert kind in ("pandas", "matplotlib", "numpy")
    body = textwrap.indent(textwrap.dedent(test).strip(), "    ")
    PROBLEMS.append(
        {
            "task_id": f"notebook/{len(PROBLEMS)}",
            "setup": textwrap.dedent(setup).strip() + "\n",
            "instruction": " ".join(instruction.split()),
            "test": f"{HELPERS}\n\ndef check(ns, result):\n{body}\n",
            "canonical_solution": textwrap.dedent(solution).strip() + "\n",
            "_meta": (kind, distractor, hidden),
        }
    )


# ---------------------------------------------------------------------------------------------
# pandas
# ---------------------------------------------------------------------------------------------

add(
    "pandas",
    """
    import pandas as pd

    housing = pd.DataFrame({
        "listing_id": [101, 102, 103, 104, 105, 106, 107, 108, 109, 110],
        "nbhd": ["Riverside", "Old Town", "Riverside", "Hillcrest", "Old Town",
                 "Hillcrest", "Riverside", "Old Town", "Hillcrest", "Riverside"],
        "sale_price_usd": [350000, 420000, 380000, 510000, 395000, 560000, 330000, 450000, 495000, 360000],
        "sqft": [1400, 1650, 1500, 2100, 1580, 2300, 1350, 1700, 2000, 1450],
        "bedrooms": [3, 3, 3, 4, 3, 5, 2, 4, 4, 3],
    })
    """,
    "What's the average sale price in each neighborhood of the housing data? Give me a Series indexed by "
    "neighborhood.",
    'housing.groupby("nbhd")["sale_price_usd"].mean()',
    """
    _frame(ns, "housing", 10)
    _mapping(result, {"Riverside": 355000.0, "Old Town": 1265000 / 3, "Hillcrest": 1565000 / 3}, "nbhd")
    """,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    employees = pd.DataFrame({
        "emp_name": ["Ana", "Ben", "Chloe", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jun"],
        "dept": ["Engineering", "Sales", "Engineering", "Engineering", "Marketing",
                 "Engineering", "Sales", "Engineering", "Marketing", "Engineering"],
        "annual_salary": [125000, 98000, 100000, 87000, 91000, 143000, 105000, 112000, 99000, 76000],
        "start_year": [2015, 2018, 2019, 2021, 2017, 2012, 2016, 2020, 2022, 2023],
    })
    offices = pd.DataFrame({
        "city": ["Lisbon", "Austin", "Osaka"],
        "headcount": [40, 85, 22],
        "opened": [2014, 2010, 2019],
    })
    """,
    "Show me the employees in Engineering who earn more than 100,000 a year.",
    'employees[(employees["dept"] == "Engineering") & (employees["annual_salary"] > 100000)]',
    """
    _frame(ns, "employees", 10)
    assert _names(result, "emp_name") == ["Ana", "Fay", "Hana"], _names(result, "emp_name")
    """,
    distractor=True,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    sales = pd.DataFrame({
        "region": ["North", "South", "East", "West", "North", "East",
                   "South", "West", "North", "East", "South", "West"],
        "units": [12, 7, 20, 5, 9, 14, 11, 8, 15, 6, 4, 10],
        "unit_price": [2.5, 3.0, 1.5, 4.0, 2.5, 1.5, 3.0, 4.0, 2.0, 2.0, 3.5, 4.0],
    })
    stores = pd.DataFrame({
        "store_id": [1, 2, 3, 4],
        "region": ["North", "South", "East", "West"],
        "manager": ["Kim", "Lopez", "Okafor", "Smith"],
    })
    """,
    "Compute the total revenue (units times unit price) per region from the sales frame, sorted from "
    "highest to lowest.",
    """
    revenue = (sales["units"] * sales["unit_price"]).groupby(sales["region"]).sum()
    revenue.sort_values(ascending=False)
    """,
    """
    _frame(ns, "sales", 12)
    s = _mapping(result, {"West": 92.0, "North": 82.5, "South": 68.0, "East": 63.0}, "region")
    assert list(s.index) == ["West", "North", "South", "East"], f"not sorted: {list(s.index)}"
    """,
    distractor=True,
)

add(
    "pandas",
    """
    import pandas as pd

    orders = pd.DataFrame({
        "order_no": list(range(5001, 5015)),
        "cust_id": ["C07", "C02", "C07", "C11", "C02", "C07", "C05",
                    "C11", "C07", "C02", "C11", "C02", "C07", "C09"],
        "amount": [20, 35, 15, 40, 25, 30, 400, 22, 18, 27, 33, 21, 16, 350],
    })
    """,
    "Who are our 3 most frequent customers in orders, i.e. the ones with the most orders? Return their order "
    "counts as a Series.",
    'orders["cust_id"].value_counts().head(3)',
    """
    _frame(ns, "orders", 14)
    _mapping(result, {"C07": 5, "C02": 4, "C11": 3}, "cust_id")
    """,
    hidden=True,
)

add(
    "pandas",
    """
    import numpy as np
    import pandas as pd

    weather = pd.DataFrame({
        "obs_date": pd.date_range("2024-07-01", periods=8, freq="D"),
        "station": ["Porto"] * 8,
        "temp_c": [24.0, np.nan, 27.5, 26.0, np.nan, 29.0, 28.5, np.nan],
        "rain_mm": [0.0, 1.2, 0.0, 0.0, 3.4, 0.0, 0.0, 0.5],
    })
    """,
    "Fill in the missing temperatures in the weather frame with the average of the known temperatures.",
    'weather["temp_c"] = weather["temp_c"].fillna(weather["temp_c"].mean())',
    """
    df = _frame(ns, "weather", 8)
    _values(df["temp_c"], [24.0, 27.0, 27.5, 26.0, 27.0, 29.0, 28.5, 27.0])
    _values(df["rain_mm"], [0.0, 1.2, 0.0, 0.0, 3.4, 0.0, 0.0, 0.5])
    """,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    orders = pd.DataFrame({
        "order_id": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "customer_id": [3, 1, 2, 3, 4, 1, 5, 2, 3, 4],
        "amount": [120.0, 80.0, 45.5, 60.0, 210.0, 35.0, 99.0, 150.0, 20.0, 75.0],
    })
    customers = pd.DataFrame({
        "customer_id": [1, 2, 3, 4, 5],
        "name": ["Lena", "Marc", "Jonas", "Lucia", "Chloe"],
        "country": ["Germany", "France", "Germany", "Spain", "France"],
    })
    """,
    "Using the orders and customers frames, compute the total order amount per customer country.",
    'orders.merge(customers, on="customer_id").groupby("country")["amount"].sum()',
    """
    _frame(ns, "orders", 10)
    _frame(ns, "customers", 5)
    _mapping(result, {"Germany": 315.0, "France": 294.5, "Spain": 285.0}, "country")
    """,
)

add(
    "pandas",
    """
    import pandas as pd

    scores = pd.DataFrame({
        "student": ["Ava", "Bo", "Cy", "Di", "Ed", "Flo", "Gil", "Hal"],
        "exam_score": [72, 58, 60, 91, 45, 66, 59, 80],
    })
    """,
    "Add a column named grade to scores that says 'pass' when the score is at least 60 and 'fail' otherwise.",
    'scores["grade"] = ["pass" if s >= 60 else "fail" for s in scores["exam_score"]]',
    """
    df = _frame(ns, "scores", 8, "grade")
    assert list(df["student"]) == ["Ava", "Bo", "Cy", "Di", "Ed", "Flo", "Gil", "Hal"]
    expected = ["pass", "fail", "pass", "pass", "fail", "pass", "fail", "pass"]
    assert list(df["grade"]) == expected, list(df["grade"])
    """,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    flights = pd.DataFrame({
        "flight_no": ["BA11", "DL20", "BA13", "UA31", "DL22", "UA33",
                      "BA15", "DL24", "UA35", "BA17", "DL26", "UA37"],
        "origin_airport": ["JFK", "LAX", "JFK", "ORD", "LAX", "ORD",
                           "JFK", "LAX", "ORD", "JFK", "LAX", "ORD"],
        "month": [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3],
        "dep_delay_min": [12, 5, 20, 30, 0, 18, 9, 14, 22, 4, 7, 10],
    })
    airports = pd.DataFrame({
        "code": ["JFK", "LAX", "ORD"],
        "city": ["New York", "Los Angeles", "Chicago"],
        "runways": [4, 4, 8],
    })
    """,
    "Make a pivot table of the average departure delay from the flights data, with origin airports as rows "
    "and months as columns.",
    'flights.pivot_table(index="origin_airport", columns="month", values="dep_delay_min", aggfunc="mean")',
    """
    _frame(ns, "flights", 12)
    assert isinstance(result, pd.DataFrame), "expected a DataFrame"
    table = result.copy()
    if isinstance(table.columns, pd.MultiIndex):
        table.columns = table.columns.get_level_values(-1)
    assert table.shape == (3, 3), table.shape
    expected = {"JFK": [16, 9, 4], "LAX": [5, 7, 7], "ORD": [30, 18, 16]}
    for origin, means in expected.items():
        for month, mean in zip([1, 2, 3], means):
            assert _close(table.loc[origin, month], mean), (origin, month, table.loc[origin, month])
    """,
    distractor=True,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    products = pd.DataFrame({
        "product": ["Widget", "Gadget", "Doohickey", "Gizmo", "Thingamajig"],
        "sales": [250.0, 400.0, 150.0, 600.0, 100.0],
    })
    suppliers = pd.DataFrame({
        "supplier": ["Northwind", "Contoso", "Fabrikam"],
        "lead_days": [14, 7, 21],
    })
    """,
    "Add a column pct_of_total to products with each product's share of total sales, as a percentage from "
    "0 to 100.",
    'products["pct_of_total"] = products["sales"] / products["sales"].sum() * 100',
    """
    df = _frame(ns, "products", 5, "pct_of_total")
    _values(df["sales"], [250.0, 400.0, 150.0, 600.0, 100.0])
    _values(df["pct_of_total"], [100 / 6, 80 / 3, 10.0, 40.0, 20 / 3])
    """,
    distractor=True,
)

add(
    "pandas",
    """
    import pandas as pd

    transactions = pd.DataFrame({
        "posted_at": pd.to_datetime(["2024-01-03", "2024-01-17", "2024-01-29", "2024-02-02", "2024-02-14",
                                     "2024-03-01", "2024-03-09", "2024-03-22", "2024-03-30"]),
        "amount_eur": [120.0, 80.0, 45.0, 300.0, 20.0, 60.0, 75.0, 15.0, 100.0],
        "merchant": ["Lidl", "Shell", "Ikea", "Airbnb", "Lidl", "Shell", "Ikea", "Lidl", "Zara"],
    })
    """,
    "Give me the total transaction amount per calendar month from transactions, as a Series in date order.",
    'transactions.resample("ME", on="posted_at")["amount_eur"].sum()',
    """
    _frame(ns, "transactions", 9)
    _values(_series(result, ("posted_at", "month")), [245.0, 320.0, 250.0])
    """,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    customers = pd.DataFrame({
        "customer_id": [1, 2, 3, 4, 5, 6, 7, 8, 9],
        "email": ["ann@gmail.com", "bob@yahoo.com", "cat@gmail.com", "dan@outlook.com", "eve@gmail.com",
                  "fox@yahoo.com", "gil@proton.me", "hal@gmail.com", "ian@outlook.com"],
    })
    inventory = pd.DataFrame({
        "item": ["bolt", "nut", "washer", "screw"],
        "on_hand": [120, 340, 75, 410],
    })
    """,
    "How many customers have each email domain (the part after the @)? Return a Series of counts indexed "
    "by domain.",
    'customers["email"].str.split("@").str[1].value_counts()',
    """
    _frame(ns, "customers", 9)
    expected = {"gmail.com": 4, "yahoo.com": 2, "outlook.com": 2, "proton.me": 1}
    _mapping(result, expected, ("domain", "email", "email_domain"))
    """,
    distractor=True,
)

add(
    "pandas",
    """
    import pandas as pd

    activity = pd.DataFrame({
        "day": pd.date_range("2024-05-01", periods=7, freq="D"),
        "steps": [8000, 6500, 10200, 4300, 12000, 9100, 7600],
    })
    """,
    "Add a column cumulative_steps to the activity frame with the running total of steps.",
    'activity["cumulative_steps"] = activity["steps"].cumsum()',
    """
    df = _frame(ns, "activity", 7, "cumulative_steps")
    _values(df["steps"], [8000, 6500, 10200, 4300, 12000, 9100, 7600])
    _values(df["cumulative_steps"], [8000, 14500, 24700, 29000, 41000, 50100, 57700])
    """,
)

add(
    "pandas",
    """
    import pandas as pd

    students = pd.DataFrame({
        "name": ["Ali", "Bea", "Cal", "Dee", "Eve", "Fin", "Gia", "Hub", "Ina"],
        "homeroom": ["A", "A", "A", "B", "B", "B", "B", "C", "C"],
        "test_pts": [88, 92, 75, 64, 81, 99, 70, 85, 90],
    })
    teachers = pd.DataFrame({
        "teacher": ["Mr. Ortiz", "Ms. Chen", "Mrs. Patel"],
        "subject": ["Math", "Biology", "History"],
        "years": [12, 5, 20],
    })
    """,
    "Add a column class_rank to students ranking each student within their class by score, where 1 is the "
    "best score in the class.",
    'students["class_rank"] = students.groupby("homeroom")["test_pts"].rank(ascending=False)',
    """
    df = _frame(ns, "students", 9, "class_rank")
    assert list(df["name"]) == ["Ali", "Bea", "Cal", "Dee", "Eve", "Fin", "Gia", "Hub", "Ina"]
    _values(df["class_rank"], [2, 1, 3, 4, 2, 1, 3, 2, 1])
    """,
    distractor=True,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    signups = pd.DataFrame({
        "email": ["a@x.io", "b@x.io", "a@x.io", "c@x.io", "b@x.io", "d@x.io", "a@x.io", "e@x.io"],
        "plan": ["free", "pro", "free", "free", "pro", "team", "pro", "free"],
        "source": ["ads", "organic", "ads", "ref", "organic", "ads", "ads", "ref"],
    })
    """,
    "Remove the duplicate rows from signups (rows identical in every column), keeping the first occurrence, "
    "so that signups itself is deduplicated.",
    "signups = signups.drop_duplicates()",
    """
    df = ns.get("signups")
    assert isinstance(df, pd.DataFrame), "signups is no longer a DataFrame"
    rows = [tuple(r) for r in df[["email", "plan", "source"]].itertuples(index=False)]
    expected = [
        ("a@x.io", "free", "ads"),
        ("b@x.io", "pro", "organic"),
        ("c@x.io", "free", "ref"),
        ("d@x.io", "team", "ads"),
        ("a@x.io", "pro", "ads"),
        ("e@x.io", "free", "ref"),
    ]
    assert rows == expected, rows
    """,
)

add(
    "pandas",
    """
    import numpy as np
    import pandas as pd

    survey = pd.DataFrame({
        "resp_id": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "age_years": [34, np.nan, 51, 27, np.nan, 45, 38, 62, 29, 41],
        "household_income": [52000, 61000, np.nan, 43000, np.nan, 88000, np.nan, 71000, 39000, 57000],
        "fav_color": ["red", "blue", "green", None, "blue", "red", "green", "green", "blue", "red"],
    })
    """,
    "Drop the rows of survey that are missing the age or the income, and give me the cleaned frame.",
    'survey.dropna(subset=["age_years", "household_income"])',
    """
    assert isinstance(result, pd.DataFrame), "expected the cleaned DataFrame"
    assert sorted(result["resp_id"]) == [1, 4, 6, 8, 9, 10], sorted(result["resp_id"])
    assert result["age_years"].notna().all() and result["household_income"].notna().all()
    """,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    q1 = pd.DataFrame({"sku": ["A1", "B2", "C3", "D4"], "units": [10, 4, 7, 12], "quarter": ["Q1"] * 4})
    q2 = pd.DataFrame({
        "sku": ["A1", "B2", "C3", "E5", "F6"],
        "units": [8, 6, 9, 3, 5],
        "quarter": ["Q2"] * 5,
    })
    """,
    "Combine q1 and q2 into one frame named all_sales with the rows of both, q1's rows first.",
    "all_sales = pd.concat([q1, q2], ignore_index=True)",
    """
    _frame(ns, "q1", 4)
    _frame(ns, "q2", 5)
    df = _frame(ns, "all_sales", 9)
    assert list(df["sku"]) == ["A1", "B2", "C3", "D4", "A1", "B2", "C3", "E5", "F6"], list(df["sku"])
    _values(df["units"], [10, 4, 7, 12, 8, 6, 9, 3, 5])
    assert list(df["quarter"]) == ["Q1"] * 4 + ["Q2"] * 5
    """,
)

add(
    "pandas",
    """
    import pandas as pd

    raw = pd.DataFrame({
        "Cust Name": ["Ada Byron", "Alan Turing", "Grace Hopper", "Edsger Dijkstra"],
        "Amt ($)": [120.5, 80.0, 310.25, 45.0],
        "Order Date": ["2024-04-01", "2024-04-03", "2024-04-03", "2024-04-07"],
    })
    """,
    "Rename the columns of raw: 'Cust Name' should become customer_name and 'Amt ($)' should become amount.",
    'raw = raw.rename(columns={"Cust Name": "customer_name", "Amt ($)": "amount"})',
    """
    df = _frame(ns, "raw", 4)
    assert list(df.columns) == ["customer_name", "amount", "Order Date"], list(df.columns)
    assert list(df["customer_name"]) == ["Ada Byron", "Alan Turing", "Grace Hopper", "Edsger Dijkstra"]
    _values(df["amount"], [120.5, 80.0, 310.25, 45.0])
    """,
)

add(
    "pandas",
    """
    import pandas as pd

    tickets = pd.DataFrame({
        "ticket_id": [901, 902, 903, 904, 905, 906, 907, 908],
        "priority": [2, 1, 3, 3, 1, 2, 2, 3],
        "opened_by": ["jo", "max", "jo", "li", "sam", "li", "max", "jo"],
    })
    agents = pd.DataFrame({
        "agent": ["Rita", "Omar", "Yuki"],
        "shift": ["early", "late", "night"],
    })
    """,
    "Add a column priority_label to tickets where priority 1 is 'high', 2 is 'medium' and 3 is 'low'.",
    'tickets["priority_label"] = tickets["priority"].map({1: "high", 2: "medium", 3: "low"})',
    """
    df = _frame(ns, "tickets", 8, "priority_label")
    _values(df["priority"], [2, 1, 3, 3, 1, 2, 2, 3])
    expected = ["medium", "high", "low", "low", "high", "medium", "medium", "low"]
    assert list(df["priority_label"]) == expected, list(df["priority_label"])
    """,
    distractor=True,
)

add(
    "pandas",
    """
    import pandas as pd

    deliveries = pd.DataFrame({
        "order_ref": ["D1", "D2", "D3", "D4", "D5", "D6", "D7", "D8", "D9"],
        "courier": ["Ali", "Bo", "Ali", "Cy", "Bo", "Cy", "Ali", "Bo", "Cy"],
        "minutes_to_deliver": [32, 45, 28, 51, 39, 60, 27, 44, 36],
    })
    couriers = pd.DataFrame({
        "courier": ["Ali", "Bo", "Cy"],
        "vehicle": ["bike", "car", "scooter"],
        "rating": [4.8, 4.5, 4.9],
    })
    """,
    "What are the median and the sample standard deviation of the delivery times in deliveries? Return them "
    "as a pair (median, std).",
    """
    t = deliveries["minutes_to_deliver"]
    (t.median(), t.std())
    """,
    """
    _frame(ns, "deliveries", 9)
    assert result is not None, "expected two numbers"
    values = list(result.values) if isinstance(result, (pd.Series, pd.DataFrame)) else list(result)
    assert len(values) == 2, f"expected two numbers, got {values}"
    minutes = [32, 45, 28, 51, 39, 60, 27, 44, 36]
    assert _close(values[0], 39.0), f"median: {values[0]}"
    assert _close(values[1], np.std(minutes, ddof=1)), f"sample std: {values[1]}"
    """,
    distractor=True,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    staff = pd.DataFrame({
        "full_name": ["K. Adams", "L. Baker", "M. Chou", "N. Diaz", "O. Evans",
                      "P. Flores", "Q. Grant", "R. Holt", "S. Ito", "T. Jones"],
        "dept_name": ["Ops", "IT", "IT", "HR", "Ops", "IT", "Ops", "HR", "IT", "Ops"],
        "base_pay": [52000, 78000, 91000, 48000, 61000, 85000, 57000, 53000, 70000, 49000],
    })
    """,
    "For each department in staff, give the number of employees and the highest salary, as a DataFrame with "
    "columns headcount and max_salary.",
    'staff.groupby("dept_name").agg(headcount=("full_name", "count"), max_salary=("base_pay", "max"))',
    """
    _frame(ns, "staff", 10)
    assert isinstance(result, pd.DataFrame), "expected a DataFrame"
    table = result.set_index("dept_name") if "dept_name" in result.columns else result
    assert {"headcount", "max_salary"} <= set(table.columns), list(table.columns)
    assert len(table) == 3, len(table)
    for dept, (count, top) in {"Ops": (4, 61000), "IT": (4, 91000), "HR": (2, 53000)}.items():
        assert _close(table.loc[dept, "headcount"], count), (dept, table.loc[dept, "headcount"])
        assert _close(table.loc[dept, "max_salary"], top), (dept, table.loc[dept, "max_salary"])
    """,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    cities = pd.DataFrame({
        "city": ["Lyon", "Porto", "Graz", "Turin", "Seville", "Leeds", "Utrecht", "Brno"],
        "pop_2020": [522000, 232000, 291000, 848000, 684000, 793000, 361000, 381000],
        "area_km2": [48, 41, 128, 130, 141, 552, 99, 230],
    })
    rivers = pd.DataFrame({
        "river": ["Rhone", "Douro", "Po"],
        "length_km": [813, 897, 652],
    })
    """,
    "Which 3 cities in cities are the most populous? Show their rows, largest first.",
    'cities.nlargest(3, "pop_2020")',
    """
    _frame(ns, "cities", 8)
    assert isinstance(result, pd.DataFrame), "expected the rows as a DataFrame"
    assert list(result["city"]) == ["Turin", "Leeds", "Seville"], list(result["city"])
    """,
    distractor=True,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    listings = pd.DataFrame({
        "listing_id": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "headline": ["Sunny flat with garden view", "Studio near station", "Garden apartment, quiet street",
                     "Loft with roof terrace", "Family house, large GARDEN", "Cozy room", "Garden-level 2BR",
                     "Penthouse", "Flat with shared garden", "Basement studio"],
        "rent_per_month": [1850, 1200, 2100, 2500, 1950, 700, 1600, 4200, 1400, 900],
    })
    """,
    "Find the listings whose title mentions 'garden' (in any case) and that rent for under 2000 a month.",
    """
    mask = listings["headline"].str.contains("garden", case=False) & (listings["rent_per_month"] < 2000)
    listings[mask]
    """,
    """
    _frame(ns, "listings", 10)
    assert isinstance(result, pd.DataFrame), "expected the matching rows as a DataFrame"
    assert sorted(result["listing_id"]) == [1, 5, 7, 9], sorted(result["listing_id"])
    """,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    visits = pd.DataFrame({
        "visitor": ["u1", "u2", "u3", "u1", "u4", "u2"],
        "visited_on": pd.to_datetime(["2024-03-04", "2024-03-06", "2024-03-09",
                                      "2024-03-10", "2024-03-15", "2024-03-18"]),
    })
    """,
    "Add a column weekday to visits with the name of the day of each visit, like 'Monday'.",
    'visits["weekday"] = visits["visited_on"].dt.day_name()',
    """
    df = _frame(ns, "visits", 6, "weekday")
    expected = ["Monday", "Wednesday", "Saturday", "Sunday", "Friday", "Monday"]
    assert list(df["weekday"]) == expected, list(df["weekday"])
    """,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    payments = pd.DataFrame({
        "payment_id": list(range(1, 13)),
        "pay_method": ["card", "paypal", "card", "cash", "card", "card",
                       "paypal", "cash", "card", "klarna", "card", "paypal"],
        "total": [25.0, 40.0, 12.5, 8.0, 60.0, 33.0, 21.0, 5.5, 18.0, 99.0, 42.0, 15.0],
    })
    exchange_rates = pd.DataFrame({
        "currency": ["USD", "GBP", "JPY"],
        "per_eur": [1.08, 0.85, 162.3],
    })
    """,
    "What share of the payments used each payment method? Give proportions that sum to 1, as a Series "
    "indexed by method.",
    'payments["pay_method"].value_counts(normalize=True)',
    """
    _frame(ns, "payments", 12)
    expected = {"card": 0.5, "paypal": 0.25, "cash": 1 / 6, "klarna": 1 / 12}
    _mapping(result, expected, ("pay_method", "method"))
    """,
    distractor=True,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    products = pd.DataFrame({
        "product_id": [1, 2, 3, 4, 5, 6, 7],
        "product_name": ["Kettle", "Toaster", "Blender", "Mixer", "Grill", "Juicer", "Fryer"],
        "price": [29.0, 35.0, 80.0, 120.0, 99.0, 60.0, 75.0],
    })
    order_items = pd.DataFrame({
        "order_id": [1, 1, 2, 3, 3, 4, 5, 6],
        "product_id": [2, 5, 2, 1, 7, 5, 2, 1],
        "qty": [1, 2, 1, 1, 1, 1, 3, 2],
    })
    """,
    "Which products have never been ordered? Use products and order_items and give me their names.",
    'products.loc[~products["product_id"].isin(order_items["product_id"]), "product_name"]',
    """
    _frame(ns, "products", 7)
    _frame(ns, "order_items", 8)
    assert _names(result, "product_name") == ["Blender", "Juicer", "Mixer"], _names(result, "product_name")
    """,
)

add(
    "pandas",
    """
    import pandas as pd

    employees = pd.DataFrame({
        "name": ["Amy", "Bill", "Cara", "Dan", "Ela", "Finn", "Gwen", "Hugo"],
        "department": ["Sales", "IT", "Sales", "IT", "HR", "Sales", "HR", "IT"],
        "salary": [50000, 70000, 60000, 80000, 45000, 55000, 47000, 75000],
    })
    """,
    "Add a column dept_avg to employees with the average salary of each employee's department.",
    'employees["dept_avg"] = employees.groupby("department")["salary"].transform("mean")',
    """
    df = _frame(ns, "employees", 8, "dept_avg")
    _values(df["salary"], [50000, 70000, 60000, 80000, 45000, 55000, 47000, 75000])
    _values(df["dept_avg"], [55000, 75000, 55000, 75000, 46000, 55000, 46000, 75000])
    """,
)

add(
    "pandas",
    """
    import pandas as pd

    athletes = pd.DataFrame({
        "athlete": ["Kip", "Ola", "Wanjiru", "Sato", "Eriksen", "Tanaka", "Cheruiyot", "Berg"],
        "nation": ["Kenya", "Norway", "Kenya", "Japan", "Norway", "Japan", "Kenya", "Norway"],
        "medals": [3, 5, 7, 2, 1, 6, 4, 8],
    })
    events = pd.DataFrame({
        "event": ["marathon", "biathlon", "judo"],
        "season": ["summer", "winter", "summer"],
    })
    """,
    "Sort the athletes frame by country from A to Z and, within each country, by medal count from most to "
    "least.",
    'athletes.sort_values(["nation", "medals"], ascending=[True, False])',
    """
    df = result if isinstance(result, pd.DataFrame) and len(result) == 8 else ns.get("athletes")
    assert isinstance(df, pd.DataFrame), "expected the sorted DataFrame"
    _frame(ns, "athletes", 8)
    expected = ["Tanaka", "Sato", "Wanjiru", "Cheruiyot", "Kip", "Berg", "Ola", "Eriksen"]
    assert list(df["athlete"]) == expected, list(df["athlete"])
    """,
    distractor=True,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    monthly = pd.DataFrame({
        "month": ["2024-01", "2024-02", "2024-03", "2024-04", "2024-05", "2024-06"],
        "rev_k": [100.0, 110.0, 99.0, 120.0, 120.0, 150.0],
    })
    """,
    "Compute the month-over-month change in revenue in the monthly frame as a fraction (0.1 means +10%), as "
    "a Series.",
    'monthly["rev_k"].pct_change()',
    """
    _frame(ns, "monthly", 6)
    s = _series(result, "month")
    expected = [0.1, -0.1, 21 / 99, 0.0, 0.25]
    _values(s.iloc[1:] if len(s) == 6 else s, expected)
    if len(s) == 6:
        assert pd.isna(s.iloc[0]), "the first month has no change"
    """,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    staff = pd.DataFrame({
        "name": ["Ana", "Ben", "Cleo", "Dario", "Ema", "Fritz", "Gala", "Henri", "Ines", "Jules"],
        "office": ["Berlin", "Paris", "Berlin", "Madrid", "Paris",
                   "Berlin", "Madrid", "Paris", "Berlin", "Paris"],
        "level": ["junior", "senior", "senior", "junior", "junior", "junior", "senior", "senior", "junior",
                  "junior"],
    })
    holidays = pd.DataFrame({
        "date": pd.to_datetime(["2024-01-01", "2024-05-01", "2024-12-25"]),
        "name": ["New Year", "Labour Day", "Christmas"],
    })
    """,
    "Count how many staff of each level work in each office, as a table with offices as rows and levels as "
    "columns.",
    'pd.crosstab(staff["office"], staff["level"])',
    """
    _frame(ns, "staff", 10)
    assert isinstance(result, pd.DataFrame), "expected a table (DataFrame)"
    expected = {("Berlin", "junior"): 3, ("Berlin", "senior"): 1, ("Paris", "junior"): 2,
                ("Paris", "senior"): 2, ("Madrid", "junior"): 1, ("Madrid", "senior"): 1}
    for (office, level), n in expected.items():
        assert _close(result.loc[office, level], n), (office, level, result.loc[office, level])
    """,
    distractor=True,
)

add(
    "pandas",
    """
    import pandas as pd

    menu = pd.DataFrame({
        "item": ["Burger", "Fries", "Steak", "Salad", "Lobster", "Soda"],
        "price": ["$12.50", "$8.00", "$15.25", "$9.75", "$22.00", "$4.50"],
    })
    """,
    "The price column of menu holds text like '$12.50'. Convert it to numbers (floats) in place.",
    'menu["price"] = menu["price"].str.lstrip("$").astype(float)',
    """
    df = _frame(ns, "menu", 6)
    assert pd.api.types.is_float_dtype(df["price"].dtype), f"price has dtype {df['price'].dtype}"
    _values(df["price"], [12.5, 8.0, 15.25, 9.75, 22.0, 4.5])
    """,
)

add(
    "pandas",
    """
    import pandas as pd

    patients = pd.DataFrame({
        "patient_id": ["P1", "P2", "P3", "P4", "P5"],
        "weight_kg": [70.0, 85.5, 62.0, 95.0, 54.3],
        "height_cm": [175, 180, 165, 190, 158],
    })
    """,
    "Add a column bmi to patients: weight in kilograms divided by the square of height in metres.",
    'patients["bmi"] = patients["weight_kg"] / (patients["height_cm"] / 100) ** 2',
    """
    df = _frame(ns, "patients", 5, "bmi")
    weights, heights = [70.0, 85.5, 62.0, 95.0, 54.3], [1.75, 1.80, 1.65, 1.90, 1.58]
    _values(df["bmi"], [w / h**2 for w, h in zip(weights, heights)])
    """,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    books = pd.DataFrame({
        "title": ["A Wizard of Earthsea", "Mort", "The Dispossessed", "The Handmaid's Tale",
                  "Guards! Guards!", "The Lathe of Heaven", "The Player of Games", "Oryx and Crake",
                  "Small Gods", "Excession", "Always Coming Home", "Klara and the Sun"],
        "author": ["Le Guin", "Pratchett", "Le Guin", "Atwood", "Pratchett", "Le Guin", "Banks", "Atwood",
                   "Pratchett", "Banks", "Le Guin", "Ishiguro"],
        "year": [1968, 1987, 1974, 1985, 1989, 1971, 1988, 2003, 1992, 1996, 1985, 2021],
    })
    libraries = pd.DataFrame({
        "branch": ["Central", "Eastside", "Harbor"],
        "books_held": [120000, 45000, 38000],
    })
    """,
    "Which authors in books have written more than two books? Just their names.",
    """
    counts = books["author"].value_counts()
    list(counts[counts > 2].index)
    """,
    """
    _frame(ns, "books", 12)
    assert _names(result, "author") == ["Le Guin", "Pratchett"], _names(result, "author")
    """,
    distractor=True,
)

add(
    "pandas",
    """
    import pandas as pd

    orders = pd.DataFrame({
        "order_id": [11, 12, 13, 14, 15, 16, 17, 18, 19, 20],
        "placed_at": pd.to_datetime(["2023-03-05", "2024-02-28", "2024-03-01", "2024-03-15", "2023-03-20",
                                     "2024-03-31", "2024-04-01", "2024-03-10", "2024-01-12", "2023-12-30"]),
        "total": [54.0, 12.0, 88.5, 23.0, 41.0, 67.0, 15.0, 99.0, 30.0, 45.5],
    })
    """,
    "Select the orders placed in March 2024.",
    'orders[(orders["placed_at"].dt.year == 2024) & (orders["placed_at"].dt.month == 3)]',
    """
    _frame(ns, "orders", 10)
    assert isinstance(result, pd.DataFrame), "expected the matching rows as a DataFrame"
    assert sorted(result["order_id"]) == [13, 14, 16, 18], sorted(result["order_id"])
    """,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    sales = pd.DataFrame({
        "product": ["tea", "coffee", "tea", "cocoa", "tea", "coffee", "tea", "coffee"],
        "qty": [2, 10, 3, 1, 2, 12, 1, 5],
        "store": ["A", "A", "B", "B", "A", "B", "B", "A"],
    })
    promos = pd.DataFrame({
        "promo": ["SPRING10", "BOGO", "VIP"],
        "discount_pct": [10, 50, 15],
    })
    """,
    "Which product sold the most units in total in the sales data? Just give me the product name.",
    'sales.groupby("product")["qty"].sum().idxmax()',
    """
    _frame(ns, "sales", 8)
    assert isinstance(result, str), f"expected the name as a string, got {type(result).__name__}"
    assert result == "coffee", result
    """,
    distractor=True,
    hidden=True,
)

add(
    "pandas",
    """
    import pandas as pd

    members = pd.DataFrame({
        "member_id": [1, 2, 3, 4, 5, 6, 7, 8, 9],
        "age": [12, 17, 18, 35, 64, 65, 80, 5, 42],
    })
    """,
    "Add a column age_group to members that puts each age into '0-17', '18-64' or '65+'.",
    'members["age_group"] = pd.cut(members["age"], bins=[0, 17, 64, 200], labels=["0-17", "18-64", "65+"])',
    """
    df = _frame(ns, "members", 9, "age_group")
    expected = ["0-17", "0-17", "18-64", "18-64", "18-64", "65+", "65+", "0-17", "18-64"]
    assert [str(v) for v in df["age_group"]] == expected, list(df["age_group"])
    """,
)

add(
    "pandas",
    """
    import pandas as pd

    quarterly = pd.DataFrame({
        "store": ["Oslo", "Bergen", "Tromso"],
        "Q1": [100, 80, 40],
        "Q2": [120, 85, 45],
        "Q3": [90, 70, 50],
        "Q4": [150, 95, 60],
    })
    staff_list = pd.DataFrame({
        "name": ["Ingrid", "Lars", "Sigrid"],
        "store": ["Oslo", "Bergen", "Tromso"],
    })
    """,
    "Reshape the wide quarterly frame into long format with columns store, quarter and sales (one row per "
    "store and quarter).",
    'quarterly.melt(id_vars="store", var_name="quarter", value_name="sales")',
    """
    _frame(ns, "quarterly", 3)
    assert isinstance(result, pd.DataFrame), "expected a DataFrame"
    assert {"store", "quarter", "sales"} <= set(result.columns), list(result.columns)
    assert len(result) == 12, len(result)
    cells = {(r.store, r.quarter): r.sales for r in result.itertuples()}
    assert len(cells) == 12, "one row per store and quarter"
    assert _close(cells[("Bergen", "Q3")], 70) and _close(cells[("Oslo", "Q4")], 150)
    assert _close(sum(cells.values()), 985)
    """,
    distractor=True,
)

# ---------------------------------------------------------------------------------------------
# numpy on frames
# ---------------------------------------------------------------------------------------------

add(
    "numpy",
    """
    import numpy as np
    import pandas as pd

    study = pd.DataFrame({
        "student": ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"],
        "hrs": [2, 4, 6, 8, 3, 5, 7, 1],
        "score_pct": [55, 62, 75, 88, 58, 70, 80, 50],
    })
    rooms = pd.DataFrame({
        "room": ["101", "102", "201"],
        "seats": [30, 24, 60],
    })
    """,
    "What's the correlation coefficient between hours studied and exam score in the study frame? A single "
    "number.",
    'np.corrcoef(study["hrs"], study["score_pct"])[0, 1]',
    """
    _frame(ns, "study", 8)
    assert result is not None and np.ndim(result) == 0, f"expected a single number, got {result!r}"
    hours, score = [2, 4, 6, 8, 3, 5, 7, 1], [55, 62, 75, 88, 58, 70, 80, 50]
    assert _close(result, np.corrcoef(hours, score)[0, 1]), result
    """,
    distractor=True,
    hidden=True,
)

add(
    "numpy",
    """
    import numpy as np
    import pandas as pd

    countries = pd.DataFrame({
        "country": ["Iceland", "Norway", "Poland", "Brazil", "India"],
        "population": [372000, 5400000, 37700000, 203000000, 1428000000],
    })
    """,
    "Add a column log_pop to countries with the base-10 logarithm of the population.",
    'countries["log_pop"] = np.log10(countries["population"])',
    """
    df = _frame(ns, "countries", 5, "log_pop")
    _values(df["population"], [372000, 5400000, 37700000, 203000000, 1428000000])
    _values(df["log_pop"], np.log10([372000, 5400000, 37700000, 203000000, 1428000000]))
    """,
)

add(
    "numpy",
    """
    import numpy as np
    import pandas as pd

    measurements = pd.DataFrame({
        "length_mm": [12.0, 15.5, 11.2, 14.8, 13.1, 16.0],
        "mass_g": [3.1, 4.2, 2.8, 4.0, 3.5, 4.6],
    })
    """,
    "Standardize every column of measurements (subtract the column mean, divide by the column standard "
    "deviation) and call the result z.",
    "z = (measurements - measurements.mean()) / measurements.std()",
    """
    z = ns.get("z")
    assert isinstance(z, pd.DataFrame), "z should be a DataFrame"
    assert z.shape == (6, 2) and set(z.columns) == {"length_mm", "mass_g"}, (z.shape, list(z.columns))
    raw = {"length_mm": [12.0, 15.5, 11.2, 14.8, 13.1, 16.0], "mass_g": [3.1, 4.2, 2.8, 4.0, 3.5, 4.6]}
    for col, xs in raw.items():
        xs = np.array(xs)
        got = z[col].to_numpy(dtype=float)
        ok = [np.allclose(got, (xs - xs.mean()) / xs.std(ddof=d)) for d in (0, 1)]
        assert any(ok), f"{col} is not standardized: {got}"
    """,
)

add(
    "numpy",
    """
    import numpy as np
    import pandas as pd

    readings = pd.DataFrame({
        "sensor": ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"],
        "humidity_pct": [45.2, 101.3, 67.0, -2.5, 99.9, 120.0, 0.0, 55.5],
    })
    sensor_sites = pd.DataFrame({
        "sensor": ["s1", "s2", "s3"],
        "site": ["roof", "cellar", "lab"],
    })
    """,
    "Some humidity readings in readings are outside 0-100; clip them to that range in place.",
    'readings["humidity_pct"] = np.clip(readings["humidity_pct"], 0, 100)',
    """
    df = _frame(ns, "readings", 8)
    _values(df["humidity_pct"], [45.2, 100.0, 67.0, 0.0, 99.9, 100.0, 0.0, 55.5])
    """,
    distractor=True,
    hidden=True,
)

add(
    "numpy",
    """
    import numpy as np
    import pandas as pd

    points = pd.DataFrame({
        "label": ["a", "b", "c", "d", "e"],
        "x_m": [3.0, -1.0, 0.0, 6.0, -5.0],
        "y_m": [4.0, 1.0, -2.0, 8.0, 12.0],
    })
    """,
    "Add a column dist to points with each point's Euclidean distance from the origin.",
    'points["dist"] = np.sqrt(points["x_m"] ** 2 + points["y_m"] ** 2)',
    """
    df = _frame(ns, "points", 5, "dist")
    _values(df["dist"], [5.0, 2**0.5, 2.0, 10.0, 13.0])
    """,
    hidden=True,
)

# ---------------------------------------------------------------------------------------------
# matplotlib
# ---------------------------------------------------------------------------------------------

add(
    "matplotlib",
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    housing = pd.DataFrame({
        "area": ["Northside", "Downtown", "Northside", "Eastgate", "Downtown", "Eastgate", "Northside"],
        "list_price_k": [420, 610, 380, 295, 655, 310, 400],
        "beds": [3, 2, 3, 2, 3, 2, 4],
    })
    schools = pd.DataFrame({
        "school": ["Lincoln", "Roosevelt", "Jefferson"],
        "rating": [8, 6, 9],
    })
    """,
    "Plot the average price per neighborhood in housing as a bar chart.",
    'housing.groupby("area")["list_price_k"].mean().plot.bar()',
    """
    _frame(ns, "housing", 7)
    bars = _bars(_axes()[0])
    assert len(bars) == 3, f"expected 3 bars, got {len(bars)}"
    heights = sorted(p.get_height() for p in bars)
    widths = sorted(p.get_width() for p in bars)
    expected = [302.5, 400.0, 632.5]
    assert np.allclose(heights, expected) or np.allclose(widths, expected), heights
    """,
    distractor=True,
    hidden=True,
)

add(
    "matplotlib",
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    daily = pd.DataFrame({
        "date": pd.date_range("2024-06-01", periods=10, freq="D"),
        "temperature": [18.2, 19.5, 21.0, 22.4, 20.1, 19.8, 23.5, 24.0, 22.7, 21.3],
    })
    """,
    "Plot temperature over date from daily as a line chart titled 'Daily temperature', with the y axis "
    "labelled 'Temperature (C)'.",
    """
    plt.plot(daily["date"], daily["temperature"])
    plt.title("Daily temperature")
    plt.ylabel("Temperature (C)")
    """,
    """
    import matplotlib.pyplot as plt

    _frame(ns, "daily", 10)
    ax = _axes()[0]
    assert _line_with(ax, [18.2, 19.5, 21.0, 22.4, 20.1, 19.8, 23.5, 24.0, 22.7, 21.3]), "no temperature line"
    suptitle = plt.gcf()._suptitle
    titles = {ax.get_title().strip(), suptitle.get_text().strip() if suptitle else ""}
    assert "Daily temperature" in titles, titles
    assert ax.get_ylabel().strip() == "Temperature (C)", ax.get_ylabel()
    """,
)

add(
    "matplotlib",
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    members = pd.DataFrame({
        "member_name": ["Ada", "Ben", "Cem", "Dua", "Eli", "Fei", "Gus", "Hoa", "Ira", "Jan", "Kai", "Lea"],
        "age_yrs": [23, 35, 41, 29, 52, 61, 38, 45, 27, 33, 48, 57],
    })
    events = pd.DataFrame({
        "event": ["AGM", "picnic", "gala"],
        "month": [3, 7, 12],
    })
    """,
    "Draw a histogram of the members' ages with 5 bins.",
    'plt.hist(members["age_yrs"], bins=5)',
    """
    _frame(ns, "members", 12)
    bars = _bars(_axes()[0])
    assert len(bars) == 5, f"expected 5 bins, got {len(bars)}"
    assert _close(sum(p.get_height() for p in bars), 12), "the bins should count the 12 members"
    assert _close(min(p.get_x() for p in bars), 23), "the bins should start at the youngest age"
    assert _close(max(p.get_x() + p.get_width() for p in bars), 61), "the bins should end at the oldest age"
    """,
    distractor=True,
    hidden=True,
)

add(
    "matplotlib",
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    people = pd.DataFrame({
        "name": ["Ana", "Bao", "Cyd", "Dov", "Edi", "Fox"],
        "ht_cm": [160, 172, 181, 168, 175, 190],
        "wt_kg": [55, 70, 82, 63, 74, 95],
    })
    """,
    "Make a scatter plot of weight (y axis) against height (x axis) for the people frame.",
    'plt.scatter(people["ht_cm"], people["wt_kg"])',
    """
    _frame(ns, "people", 6)
    ax = _axes()[0]
    if ax.collections:
        xy = np.asarray(ax.collections[0].get_offsets(), dtype=float)
    else:
        line = ax.lines[0]
        xy = np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float)
    assert xy.shape == (6, 2), f"expected 6 points, got {xy.shape}"
    assert np.allclose(xy[:, 0], [160, 172, 181, 168, 175, 190]), "x should be the heights"
    assert np.allclose(xy[:, 1], [55, 70, 82, 63, 74, 95]), "y should be the weights"
    """,
    hidden=True,
)

add(
    "matplotlib",
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    market = pd.DataFrame({
        "company": ["Acme", "Globex", "Initech", "Umbrella"],
        "share": [40, 25, 20, 15],
    })
    employees = pd.DataFrame({
        "name": ["Wile", "Hank", "Peter"],
        "company": ["Acme", "Globex", "Initech"],
    })
    """,
    "Show the market share of each company in market as a pie chart.",
    'plt.pie(market["share"], labels=market["company"])',
    """
    from matplotlib.patches import Wedge

    _frame(ns, "market", 4)
    wedges = [p for p in _axes()[0].patches if isinstance(p, Wedge)]
    assert len(wedges) == 4, f"expected 4 slices, got {len(wedges)}"
    fractions = sorted((w.theta2 - w.theta1) / 360 for w in wedges)
    assert np.allclose(fractions, [0.15, 0.20, 0.25, 0.40], atol=1e-3), fractions
    """,
    distractor=True,
)

add(
    "matplotlib",
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    finance = pd.DataFrame({
        "month": ["Jan", "Feb", "Mar", "Apr", "May", "Jun"],
        "revenue": [120, 135, 150, 160, 155, 170],
        "cost": [100, 105, 118, 125, 130, 128],
    })
    """,
    "Plot revenue and cost by month from finance as two lines on the same axes, with a legend.",
    """
    finance.plot(x="month", y=["revenue", "cost"])
    plt.legend()
    """,
    """
    import matplotlib.pyplot as plt

    _frame(ns, "finance", 6)
    ax = next((a for a in _axes() if len(a.lines) >= 2), None)
    assert ax is not None, "expected two lines on one axes"
    assert _line_with(ax, [120, 135, 150, 160, 155, 170]), "no revenue line"
    assert _line_with(ax, [100, 105, 118, 125, 130, 128]), "no cost line"
    assert ax.get_legend() is not None or plt.gcf().legends, "no legend"
    """,
)

add(
    "matplotlib",
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    flowers = pd.DataFrame({
        "sepal_length": [5.1, 4.9, 6.3, 5.8, 7.1, 6.5, 5.0, 6.7, 5.5, 6.0],
        "petal_length": [1.4, 1.4, 6.0, 5.1, 5.9, 5.8, 1.6, 5.0, 4.0, 4.5],
    })
    """,
    "Make a figure with two subplots side by side: a histogram of sepal_length on the left and a histogram "
    "of petal_length on the right.",
    """
    fig, (left, right) = plt.subplots(1, 2)
    left.hist(flowers["sepal_length"])
    right.hist(flowers["petal_length"])
    """,
    """
    _frame(ns, "flowers", 10)
    axes = [a for a in _axes() if _bars(a)]
    assert len(axes) == 2, f"expected two subplots with histograms, got {len(axes)}"
    left, right = sorted(axes, key=lambda a: a.get_position().x0)
    assert left.get_position().x1 <= right.get_position().x0 + 1e-9, "the subplots should be side by side"
    for ax, lo, hi in ((left, 4.9, 7.1), (right, 1.4, 6.0)):
        bars = _bars(ax)
        assert _close(sum(p.get_height() for p in bars), 10), "each histogram counts the 10 flowers"
        assert _close(min(p.get_x() for p in bars), lo), "wrong column in a subplot"
        assert _close(max(p.get_x() + p.get_width() for p in bars), hi), "wrong column in a subplot"
    """,
)

add(
    "matplotlib",
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    revenue = pd.DataFrame({
        "sku_name": ["Lamp", "Desk", "Chair", "Shelf", "Rug", "Sofa", "Bed", "Mirror"],
        "rev_usd": [1200, 5400, 3100, 800, 2600, 9800, 7300, 450],
    })
    warehouses = pd.DataFrame({
        "warehouse": ["Reno", "Dallas"],
        "capacity": [5000, 8000],
    })
    """,
    "Make a horizontal bar chart of the 5 products with the highest revenue.",
    """
    top = revenue.nlargest(5, "rev_usd")
    plt.barh(top["sku_name"], top["rev_usd"])
    """,
    """
    _frame(ns, "revenue", 8)
    bars = _bars(_axes()[0])
    assert len(bars) == 5, f"expected 5 bars, got {len(bars)}"
    widths = sorted(p.get_width() for p in bars)
    assert np.allclose(widths, [2600, 3100, 5400, 7300, 9800]), f"bar lengths {widths} (horizontal bars?)"
    """,
    distractor=True,
    hidden=True,
)

add(
    "matplotlib",
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    tickets = pd.DataFrame({
        "ticket_id": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "category": ["billing", "bug", "bug", "feature", "billing", "bug", "account", "bug", "feature",
                     "billing"],
    })
    """,
    "Bar chart of how many tickets there are per category, with the x axis labelled 'Category' and the y "
    "axis labelled 'Count'.",
    """
    tickets["category"].value_counts().plot.bar()
    plt.xlabel("Category")
    plt.ylabel("Count")
    """,
    """
    _frame(ns, "tickets", 10)
    ax = _axes()[0]
    bars = _bars(ax)
    assert sorted(p.get_height() for p in bars) == [1, 2, 3, 4], sorted(p.get_height() for p in bars)
    assert ax.get_xlabel().strip() == "Category", ax.get_xlabel()
    assert ax.get_ylabel().strip() == "Count", ax.get_ylabel()
    """,
)

add(
    "matplotlib",
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    daily_sales = pd.DataFrame({
        "day": pd.date_range("2024-09-01", periods=7, freq="D"),
        "gross": [200, 150, 300, 250, 100, 400, 350],
    })
    """,
    "Plot the running total of sales over the days in daily_sales as a line.",
    'plt.plot(daily_sales["day"], daily_sales["gross"].cumsum())',
    """
    _frame(ns, "daily_sales", 7)
    ax = _axes()[0]
    assert _line_with(ax, [200, 350, 650, 900, 1000, 1400, 1750]), "no line of the running total"
    """,
    hidden=True,
)

add(
    "matplotlib",
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    regional = pd.DataFrame({
        "region": ["North", "North", "South", "South", "West", "West"],
        "yr": [2023, 2024, 2023, 2024, 2023, 2024],
        "net_sales": [150, 180, 120, 110, 90, 130],
    })
    """,
    "Make a grouped bar chart comparing 2023 and 2024 sales for each region in regional (one bar per region "
    "and year).",
    'regional.pivot(index="region", columns="yr", values="net_sales").plot.bar()',
    """
    _frame(ns, "regional", 6)
    bars = _bars(_axes()[0])
    assert len(bars) == 6, f"expected 6 bars, got {len(bars)}"
    heights = sorted(p.get_height() for p in bars)
    assert np.allclose(heights, [90, 110, 120, 130, 150, 180]), heights
    """,
    hidden=True,
)


def main() -> None:
    lines = []
    for problem in PROBLEMS:
        row = {k: v for k, v in problem.items() if not k.startswith("_")}
        lines.append(json.dumps(row) + "\n")
    OUT.write_text("".join(lines), encoding="utf-8")
    kinds = Counter(p["_meta"][0] for p in PROBLEMS)
    distractors = sum(p["_meta"][1] for p in PROBLEMS)
    hidden = sum(p["_meta"][2] for p in PROBLEMS)
    print(f"wrote {len(PROBLEMS)} problems to {OUT}")
    print(f"  by kind: {dict(kinds)}; with a distractor frame: {distractors}; hidden column names: {hidden}")


if __name__ == "__main__":
    main()
