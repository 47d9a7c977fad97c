"""Row layouts (data/layouts.py): which tokens each training row holds."""

from __future__ import annotations

import numpy as np

from phiforge.data.documents import DocRefs, Documents
from phiforge.data.layouts import IGNORE, Examples, Stream, pack_examples


def test_stream_rows_are_a_pure_function_of_their_range_and_repeat_to_min_rows():
    docs = Documents.of([[1, 2, 3], [4, 5], [6, 7, 8, 9]])
    stream = Stream([docs], DocRefs.whole(0, docs.lengths), seq_len=3, eos_id=0, min_rows=5)
    whole, _ = stream.rows(0, stream.n_rows)
    assert whole[:3].ravel().tolist() == [1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 0]  # documents end to end, EOS after each
    assert stream.n_rows == 6 and whole[3:].ravel().tolist() == whole[:3].ravel().tolist()  # repeated past 12 tokens
    for start, stop in ((0, 1), (1, 4), (2, 6), (5, 6)):  # any shard's rows, built alone, are the same
        assert np.array_equal(stream.rows(start, stop)[0], whole[start:stop])


def test_examples_rows_are_a_pure_function_of_their_range():
    ids = [[1, 2, 3], [4, 5, 6, 7], [8, 9], [10]]
    layout = Examples(Documents.of(ids, ids), seq_len=4, pad_id=0)
    tokens, labels = layout.rows(0, layout.n_rows)
    positions = layout.positions(0, layout.n_rows)
    for start, stop in ((0, 1), (1, 3), (2, 3)):
        part = layout.rows(start, stop)
        assert np.array_equal(part[0], tokens[start:stop]) and np.array_equal(part[1], labels[start:stop])
        assert np.array_equal(layout.positions(start, stop), positions[start:stop])
    # each example counts from 0, and so does the padding after a row's last example
    assert positions.tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0], [0, 1, 0, 0, 1]]


def test_pack_examples_keeps_examples_whole():
    examples = [([1, 2, 3], [IGNORE, 2, 3]), ([4, 5, 6, 7], [IGNORE, IGNORE, 6, 7]), ([8, 9], [8, 9])]
    packed = pack_examples(examples, seq_len=4, pad_id=0)
    assert packed.tokens[0].tolist() == [[1, 2, 3, 0, 0], [4, 5, 6, 7, 0], [8, 9, 0, 0, 0]]
    assert packed.labels[0].tolist() == [[IGNORE, 2, 3, IGNORE, IGNORE], [IGNORE, IGNORE, 6, 7, IGNORE],
                                         [8, 9, IGNORE, IGNORE, IGNORE]]
