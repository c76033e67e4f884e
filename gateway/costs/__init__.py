"""Costs: what model calls cost and who is told — the sums (`values`), read from the rollups
(`rollups`), period reports and budgets (`reports`, `budgets`), the
chat commands over them (`commands`), the admin digest's content (`digest`), when it is owed and
sending it once per period (`schedule`), its spend chart (`chart`) and getting it to people
(`delivery`).
"""
