"""The memory budget of ASAG's attention: the most that one call of the operators (``asag.sinkhorn``,
``asag.joint``) may hold at once besides its output. One constant, here with no torch import, so
that the Settings tab, which offers to lower it on a small GPU, is built without torch."""

MEMORY_BUDGET_MIB = 256
