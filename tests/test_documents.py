"""Tokenised documents in flat files and documents by reference (data/documents.py)."""

from __future__ import annotations

import numpy as np

from phiforge.data.documents import DocRefs, Documents, tokenize, tokenized, write_documents


def test_documents_stream_to_flat_files_and_map_back(tmp_path):
    batches = [([[1, 2], [3]], [[-100, 2], [3]]), ([[4, 5, 6]], [[4, -100, 6]])]
    docs = write_documents(tmp_path / "sft", iter(batches))
    assert isinstance(docs.tokens, np.memmap) and docs.lengths.tolist() == [2, 1, 3]
    assert docs.tokens.tolist() == [1, 2, 3, 4, 5, 6] and docs.labels.tolist() == [-100, 2, 3, 4, -100, 6]
    again = write_documents(tmp_path / "sft", iter([([[9]], None)]))  # a finished directory is loaded, not rewritten
    assert again.tokens.tolist() == docs.tokens.tolist()
    unlabelled = write_documents(tmp_path / "text", [([[7, 8]], None)])
    assert unlabelled.labels is None and not (tmp_path / "text" / "labels.bin").exists()


def test_tokenized_in_batches_equals_tokenizing_all_at_once(tmp_path, tok):
    texts = [f"What is {i} + {i}?" for i in range(10)]
    docs = tokenized(tmp_path / "docs", tok, texts, batch=3)
    expected = tokenize(tok, texts)
    assert [docs.tokens[a:b].tolist() for a, b in zip(docs.offsets[:-1], docs.offsets[1:])] == expected
    assert tokenize(tok, []) == []


def test_docrefs_select_and_concatenate():
    refs = DocRefs.concat([DocRefs.whole(0, np.array([3, 0, 5])), DocRefs.whole(1, np.array([2]))])
    assert refs.source.tolist() == [0, 0, 0, 1] and refs.doc.tolist() == [0, 1, 2, 0] and len(refs) == 4
    kept = refs[refs.length > 0]
    assert kept.doc.tolist() == [0, 2, 0] and kept.length.tolist() == [3, 5, 2]
    assert Documents.of([[1], [2, 3]]).lengths.tolist() == [1, 2]
