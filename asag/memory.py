"""The memory budget of the Sinkhorn attention: the most that the plan's working set of one call
may take (``asag.sinkhorn``). One constant, here with no torch import, so that the Settings tab,
which offers to lower it on a small GPU, is built without torch."""

MEMORY_BUDGET_MIB = 256
