"""Right-padded batches of token sequences for the reward models' forwards (local_rm.py,
value_head_rm.py): sequences of similar length share a batch, so little of it is padding.

    length_batches([5, 90, 7, 88], max_tokens=200) -> [[0, 2], [3, 1]]   rows x longest <= 200
    right_padded([[1, 2, 3], [4]])                 -> ids [[1, 2, 3], [4, 0, 0]]
                                                      valid [[T, T, T], [T, F, F]]
"""

from __future__ import annotations

import torch


def length_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped by length (shortest first) so that rows x longest <= max_tokens; a
    sequence longer than max_tokens is a batch of its own."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and (len(batches[-1]) + 1) * lengths[i] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def right_padded(sequences: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids (B, T) long, each sequence followed by 0s, and valid (B, T) bool, True at its real
    tokens; T is the longest sequence."""
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    valid = torch.zeros(len(sequences), width, dtype=torch.bool)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        valid[row, : len(seq)] = True
    return ids.to(device), valid.to(device)
