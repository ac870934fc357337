"""Data: rows → validated rows → token ids → batches.

    rows = load_rows("pairs.jsonl", kind="paired")          # raises UserError listing bad rows (before any model)
    examples, report = encode_rows(rows, tokenizer, max_length=1024, truncation="keep_start")
    batch = collate_pairs(examples[:4], tokenizer.pad_token_id, layout="shared_prefix")

Modules: ``io`` reads files, ``validate`` checks rows (``load_rows``), ``encode`` splits prompt from completion in
token space and truncates (``encode_rows``), ``batch`` pads or packs.
"""

from __future__ import annotations

from prefalign.data.batch import SeqBatch, collate_pairs
from prefalign.data.encode import PreprocessReport, encode_rows
from prefalign.data.types import PairExample, PointExample
from prefalign.data.validate import Rows, load_rows

__all__ = ["PairExample", "PointExample", "PreprocessReport", "Rows", "SeqBatch", "collate_pairs", "encode_rows",
           "load_rows"]
