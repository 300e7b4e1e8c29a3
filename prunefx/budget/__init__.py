"""Latency budgets as a library capability: `meet_budget` makes a Program meet a measured speed-up or
latency by width, depth or both (prunefx/budget/meet.py), and says how in a BudgetOutcome
(prunefx/budget/outcome.py); the routes themselves are in prunefx/budget/routes.py."""

from prunefx.budget.meet import meet_budget
from prunefx.budget.outcome import ROUTES, BudgetOutcome, MeasuredOn, RouteRefusal
from prunefx.budget.routes import depth_blocks
from prunefx.passes.budget.search import BudgetUnreachable

__all__ = ["ROUTES", "BudgetOutcome", "BudgetUnreachable", "MeasuredOn", "RouteRefusal", "depth_blocks", "meet_budget"]
