"""Budget arithmetic: hardware, FLOPs, cost, memory, scaling laws and the planner built on them."""
