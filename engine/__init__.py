"""The replica engine: one per DP replica, on the replica's leader rank.

Scheduler, block manager and prefix cache, the outside API the router calls, and the step
plan handed to the replica's ranks. The scheduler and block manager import no torch and know
nothing of TP/PP/EP: they see one logical worker.
"""
