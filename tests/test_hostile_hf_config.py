"""The Hugging Face write-back offers a bounded number of configs for a list field: a list of 24 widths, each
of which became one of two sizes, is not expanded into 2**24 lists (5.4 GB)."""

from __future__ import annotations

import time

from prunefx.interop import hf_config


class _Config:
    """The one method of a transformers config the field options read."""

    def __init__(self, fields: dict):
        self.fields = fields

    def to_dict(self) -> dict:
        return dict(self.fields)


def test_a_list_of_24_widths_gives_a_few_candidate_lists_likeliest_first():
    widths = [64 + 8 * i for i in range(24)]
    mapping = {w: {w, w // 2, w // 4} for w in widths}  # each width became two sizes somewhere
    started = time.perf_counter()
    options = dict(hf_config._field_options(_Config({"hidden_sizes": widths}), mapping))
    assert time.perf_counter() - started < 1
    lists = options["hidden_sizes"]
    assert 2 <= len(lists) <= hf_config.MAX_LIST_OPTIONS
    assert lists[0] == [w // 4 for w in widths]  # every element at its first changed size (smallest first)
    assert widths in lists  # the dense list is always offered
    assert len({tuple(candidate) for candidate in lists}) == len(lists)


def test_a_short_list_still_offers_every_combination():
    mapping = {32: {16}, 64: {32}}
    options = dict(hf_config._field_options(_Config({"hidden_sizes": [32, 64]}), mapping))
    assert sorted(options["hidden_sizes"]) == sorted([[16, 32], [16, 64], [32, 32], [32, 64]])
