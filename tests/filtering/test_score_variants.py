"""The built-in filtering scores, as registered (`deft_filter_score: delta | chosen`)."""

import pytest
import torch

from deft_plugin import registry
from deft_plugin.filtering import score_variants


@pytest.mark.covers("plugin:deft_plugin.filtering.score_variants", "score:delta", "score:chosen")
def test_builtin_scores_by_hand():
    assert registry.plugin_manager().get_plugin("score_variants") is score_variants
    variants = registry.score_variants()
    r_chosen, r_rejected = torch.tensor([0.5, -0.1, 0.0]), torch.tensor([0.2, 0.3, 0.0])
    assert variants["delta"](r_chosen, r_rejected).tolist() == pytest.approx([0.3, -0.4, 0.0])
    assert variants["chosen"](r_chosen, r_rejected).tolist() == pytest.approx([0.5, -0.1, 0.0])
