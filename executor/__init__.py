"""pypto_serving.executor: what each worker hosts.

Process groups built from core's resolved topology (`distributed`), the group accessors
(`get_tp_group()` ...), the `ParallelContext` handed to model runners (`context`), the
`ModelRunner` contract and the reference decoder with its TP / PP / EP wrappers.

Importing this package imports no torch; its modules do.
"""
