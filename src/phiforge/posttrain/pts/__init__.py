"""Pivotal Token Search (PTS): the tokens of a model's own solutions where p(success) jumps, as DPO pairs.

p(success | Q, prefix) is the fraction of sampled completions of `prefix` that the oracle (synth/verify.py)
accepts. The search is the report's SUBDIVIDE: a segment of the solution whose two ends differ by at least
p_gap in p(success) is split in two, recursively, until single tokens remain; those are the pivots. Here it
runs one tree level at a time so every comparison of a level samples in one batch, and (adaptive mode) each
comparison samples in rounds until a confidence bound on the difference decides it against p_gap.
Estimates are cached per prefix (token ids), and every sampled completion is counted. Several problems are
searched at once (`concurrent`): each search is a generator that yields the rows it needs sampled, and one
batch serves them all, since a forward pass costs about as much for 16 rows as for 256 on a CPU.

A pivot becomes a pair with the opposite side drawn from the model's own next-token distribution at the
same prefix: for a token that raises p(success) it is the chosen side and an alternative that lowers it the
rejected one, and the reverse. Both sides are measured at the full budget before a pair is kept.

Modules: `config` (the settings), `sampler` (batched sampling with a shared KV cache), `estimates` (p(success)
and its bounds), `search` (the search of one problem, and the driver that batches several), `runner` (the
resumable run over a problems file), `plot` (where pivots fall).
"""
