"""Self-critical sequence training (Rennie et al. 2017): after cross-entropy, optimise CIDEr-D itself.

For every image the decoder draws k captions; each one's reward is its CIDEr-D against the
image's references, and its baseline is the mean reward of the other k - 1 (Luo 2020, "a better
variant of SCST"), so no greedy decode is needed. The loss pushes up the log-probability of
captions that beat their siblings and down the others. The reward is `cider.CiderD`.
"""

from __future__ import annotations

import torch

from captioning.cider import CiderD, words_for_reward
from captioning.vocab import Vocabulary


def scst_loss(
    decoder: torch.nn.Module,
    feats: torch.Tensor,
    image_ids: list[int],
    vocab: Vocabulary,
    cider: CiderD,
    k: int = 5,
    max_len: int = 16,
) -> tuple[torch.Tensor, float]:
    """Policy-gradient loss over k sampled captions per image, and their mean reward.

    `decoder` may be a DistributedDataParallel wrapper: sampling goes through its forward.
    """
    if k < 2:
        raise ValueError(f"SCST needs at least 2 samples per image for its baseline (got {k})")
    ids, logps = decoder(feats, sample={"vocab": vocab, "k": k, "max_len": max_len})
    rows = ids.tolist()
    rewards = []
    for n, row in enumerate(rows):
        words = []
        for i in row:
            if i in (vocab.end_id, vocab.pad_id):
                break
            words.append(vocab.itos[i])
        rewards.append(cider.score(image_ids[n // k], words_for_reward(words)))
    r = torch.tensor(rewards, device=logps.device).view(-1, k)  # (B, k)
    baseline = (r.sum(dim=1, keepdim=True) - r) / (k - 1)
    advantage = (r - baseline).view(-1, 1)  # (B*k, 1)
    tokens = (ids != vocab.pad_id).sum().clamp(min=1)  # words and <end>
    return -(advantage * logps).sum() / tokens, float(r.mean())
