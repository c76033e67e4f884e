"""Costs: what model calls cost and who is told — period reports and budgets (`reports`), the
chat commands over them (`commands`), the admin digest and its schedule (`digest`), its spend
chart (`chart`) and getting it to people (`delivery`).
"""
