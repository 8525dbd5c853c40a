"""Search strategies, one module each; every module here registers itself on import.

Add a strategy by dropping a module in this folder that defines a :class:`~hub_merge.search.
strategy.Strategy` subclass decorated with ``@register_strategy`` (see ``greedy.py``). Nothing
else needs editing: ``hub_merge.search.strategy.load_strategies`` imports every module here.
"""
