"""Which of the captured model's channels each tensor of a pruned Program keeps: the Program's `kept_channels`
record (graph/analysis_record.py). Channel removal adds every tensor dim it slices, composed with what earlier
removals kept; the write-back reads it to cut, the same way, the branches the Program dropped as dead code
(prunefx/interop/dead_branches.py). Each mask is over the captured width, stored once however many tensors
share it, as 'width:hex' (a ViT-L's masks take tens of kilobytes of prunefx.json, not megabytes).
"""

from __future__ import annotations

import numpy as np

from prunefx.graph.analysis_record import AnalysisRecordError, KeptChannelsRecord


def encode(mask: np.ndarray) -> str:
    return f"{mask.size}:{np.packbits(mask.astype(bool)).tobytes().hex()}"


def decode(text: str) -> np.ndarray:
    """The boolean mask `text` holds; AnalysisRecordError for one that is not of encode's form."""
    width, _, digits = text.partition(":")
    try:
        size = int(width)
        packed = np.frombuffer(bytes.fromhex(digits), dtype=np.uint8)
    except ValueError:
        raise AnalysisRecordError("analysis record 'kept_channels': a mask is not 'width:hex'") from None
    if size < 0 or packed.size != (size + 7) // 8:
        raise AnalysisRecordError("analysis record 'kept_channels': a mask's width does not match its digits")
    return np.unpackbits(packed)[:size].astype(bool)


def kept_masks(record: KeptChannelsRecord | None) -> dict[str, dict[int, np.ndarray]]:
    """Each recorded tensor's keep masks over the captured widths, by dim."""
    if record is None:
        return {}
    masks = [decode(text) for text in record.masks]
    return {name: {int(dim): masks[index] for dim, index in dims.items()} for name, dims in record.tensors.items()}


def with_removal(record: KeptChannelsRecord | None, sliced: dict[str, dict[int, np.ndarray]]
                 ) -> KeptChannelsRecord:
    """`record` after a removal that kept, of each tensor dim it `sliced`, the positions its mask holds (over the
    width the tensor had then). A dim recorded before is composed: its mask keeps what both kept. One whose
    earlier mask does not keep as many channels as the tensor had (a pass that resized it without saying) is
    dropped: the record never states what it does not know."""
    masks = kept_masks(record)
    for name, dims in sliced.items():
        for dim, keep in dims.items():
            earlier = masks.get(name, {}).get(dim)
            if earlier is None:
                masks.setdefault(name, {})[dim] = keep.astype(bool)
            elif int(earlier.sum()) == keep.size:
                composed = earlier.copy()
                composed[np.flatnonzero(earlier)[~keep]] = False
                masks[name][dim] = composed
            else:
                del masks[name][dim]
    return _packed(masks)


def _packed(masks: dict[str, dict[int, np.ndarray]]) -> KeptChannelsRecord:
    texts: dict[str, int] = {}
    tensors = {name: {str(dim): texts.setdefault(encode(mask), len(texts)) for dim, mask in sorted(dims.items())}
               for name, dims in sorted(masks.items()) if dims}
    return KeptChannelsRecord(masks=list(texts), tensors=tensors)
