"""Time limits of the tests' subprocesses and notebook cells.

They only catch a hang: a slow or busy machine is not a failure (no test asserts a duration;
speed is the benchmarks' job). On a 2-core laptop with two other busy processes, notebook 03's
training cell took over 15 minutes, so the guard is generous.
"""

HANG_GUARD_S = 2400
