"""The discrepancy distribution Q = P+ - P-: counts without special tokens, the three
normalisations on a hand example, the saved artifact, the top tokens and their plot."""

import math

import pytest
import torch

from deft_plugin.core.qdiff import NORMS, QDiff, discrepancy, token_counts

# Hand example, vocabulary of 6, token 0 special (excluded), token 5 never seen.
#   chosen  tokens 1 x3, 2 x1, 4 x4 (+ 0 x2)  -> P+ = [0, 3/8, 1/8, 0,   4/8, 0]
#   rejected tokens 1 x1, 2 x2, 3 x1 (+ 0 x1) -> P- = [0, 1/4, 2/4, 1/4, 0,   0]
#   Q = [0, 1/8, -3/8, -1/4, 1/2, 0]
CHOSEN = [[0, 1, 4, 4], [1, 2, 4, 0], [4, 1], []]
REJECTED = [[2, 1, 0], [3, 2]]
Q = [0.0, 1 / 8, -3 / 8, -1 / 4, 1 / 2, 0.0]


def _hand() -> QDiff:
    return QDiff.build(CHOSEN, REJECTED, vocab_size=6, special_ids=[0, 0, 99], norm="maxabs",
                       tokenizer="hand", pairs=2)


def test_token_counts_exclude_special_tokens():
    assert token_counts(CHOSEN, 6).tolist() == [2, 3, 1, 0, 4, 0]
    assert token_counts(CHOSEN, 6, exclude=[0]).tolist() == [0, 3, 1, 0, 4, 0]
    # ids outside the vocabulary in `exclude` are ignored; several exclusions at once
    assert token_counts(CHOSEN, 6, exclude=[0, 4, 17, -1]).tolist() == [0, 3, 1, 0, 0, 0]
    assert token_counts([], 4).tolist() == [0, 0, 0, 0]
    assert token_counts([(1, 1), torch.tensor([3])], 4).tolist() == [0, 2, 0, 1]  # tuples and tensors
    assert token_counts(CHOSEN, 6).dtype == torch.int64


def test_token_counts_reject_ids_outside_vocabulary():
    with pytest.raises(ValueError, match="outside the vocabulary of size 6"):
        token_counts([[1, 2], [6]], 6)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_counts([[-1, 2]], 6)


def test_q_is_difference_of_distributions_and_sums_to_zero():
    qd = _hand()
    assert qd.q.dtype == torch.float64 and qd.qn.dtype == torch.float32
    assert qd.q.tolist() == Q  # exact: dyadic fractions
    assert float(qd.q.sum()) == 0.0
    assert qd.chosen_counts.tolist() == [0, 3, 1, 0, 4, 0]
    assert qd.rejected_counts.tolist() == [0, 1, 2, 1, 0, 0]
    assert qd.meta == {"vocab_size": 6, "norm": "maxabs", "special_ids": [0, 99], "chosen_tokens": 8,
                       "rejected_tokens": 4, "tokenizer": "hand", "pairs": 2}


def test_q_sums_to_zero_on_random_counts():
    g = torch.Generator().manual_seed(0)
    cc = torch.randint(0, 50, (1000,), generator=g)
    rc = torch.randint(0, 50, (1000,), generator=g)
    q, qn = discrepancy(cc, rc, "l2")
    assert abs(float(q.sum())) < 1e-15
    assert abs(float(qn.double().sum())) < 1e-5
    assert abs(float(qn.double().norm()) - 1.0) < 1e-6


def test_normalisations_exact_on_hand_example():
    cc = torch.tensor([0, 3, 1, 0, 4, 0])
    rc = torch.tensor([0, 1, 2, 1, 0, 0])
    q_max, qn_max = discrepancy(cc, rc, "maxabs")
    assert q_max.tolist() == Q
    assert qn_max.tolist() == [0.0, 0.25, -0.75, -0.5, 1.0, 0.0]
    _, qn_l2 = discrepancy(cc, rc, "l2")  # ||Q|| = sqrt(1 + 9 + 4 + 16) / 8
    expected = torch.tensor([0, 1, -3, -2, 4, 0], dtype=torch.float64) / math.sqrt(30)
    torch.testing.assert_close(qn_l2, expected.float(), rtol=0, atol=1e-7)
    _, qn_none = discrepancy(cc, rc, "none")
    assert qn_none.tolist() == Q  # exactly representable in float32 too
    assert NORMS == ("maxabs", "l2", "none")


def test_default_norm_is_maxabs_and_build_matches_discrepancy():
    cc, rc = torch.tensor([0, 3, 1, 0, 4, 0]), torch.tensor([0, 1, 2, 1, 0, 0])
    assert discrepancy(cc, rc)[1].tolist() == discrepancy(cc, rc, "maxabs")[1].tolist()
    for norm in NORMS:
        qd = QDiff.build(CHOSEN, REJECTED, 6, special_ids=[0], norm=norm)
        assert qd.qn.tolist() == discrepancy(cc, rc, norm)[1].tolist()
        assert qd.meta["norm"] == norm


def test_identical_distributions_give_zero_q_not_nan():
    q, qn = discrepancy(torch.tensor([0, 2, 4]), torch.tensor([0, 1, 2]), "maxabs")
    assert q.tolist() == [0.0, 0.0, 0.0] and qn.tolist() == [0.0, 0.0, 0.0]
    _, qn = discrepancy(torch.tensor([0, 2, 4]), torch.tensor([0, 1, 2]), "l2")
    assert qn.tolist() == [0.0, 0.0, 0.0]


def test_errors():
    with pytest.raises(ValueError, match="deft_qdiff_norm.*'L1'"):
        discrepancy(torch.tensor([1, 2]), torch.tensor([2, 1]), "L1")
    with pytest.raises(ValueError, match="deft_qdiff_norm"):
        QDiff.build(CHOSEN, REJECTED, 6, norm="max")
    # only special tokens in the rejected replies: no distribution to compare with
    with pytest.raises(ValueError, match="no tokens"):
        QDiff.build(CHOSEN, [[0, 0], []], 6, special_ids=[0])
    with pytest.raises(FileNotFoundError, match="qdiff.safetensors"):
        QDiff.load("no-such-directory-for-qdiff")


def test_save_load_round_trip_atomic(tmp_path):
    qd = _hand()
    out = qd.save(tmp_path / "artifact")
    assert out == tmp_path / "artifact"
    assert sorted(p.name for p in out.iterdir()) == ["qdiff.json", "qdiff.safetensors"]  # no temp files left
    back = QDiff.load(out)
    for name in ("q", "qn", "chosen_counts", "rejected_counts"):
        a, b = getattr(qd, name), getattr(back, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert back.meta == qd.meta
    # saving again over an existing artifact replaces it, still without temp files
    other = QDiff.build([[1, 1, 2]], [[3]], 6, norm="l2", tokenizer="other")
    other.save(out)
    assert sorted(p.name for p in out.iterdir()) == ["qdiff.json", "qdiff.safetensors"]
    again = QDiff.load(str(out))
    assert torch.equal(again.q, other.q) and again.meta["tokenizer"] == "other" and again.meta["norm"] == "l2"


def test_top_tokens_sides_and_order():
    qd = _hand()  # Q = [0, 1/8, -3/8, -1/4, 1/2, 0]
    top = qd.top_tokens(k=10, decode=lambda i: f"<t{i}>")
    assert set(top) == {"chosen", "rejected"}
    assert [r["id"] for r in top["chosen"]] == [4, 1]  # positive Q only, largest first
    assert [r["id"] for r in top["rejected"]] == [2, 3]  # negative Q only, most negative first
    assert top["chosen"][0] == {"id": 4, "token": "<t4>", "q": 0.5, "qn": 1.0, "chosen_count": 4, "rejected_count": 0}
    assert top["rejected"][1] == {"id": 3, "token": "<t3>", "q": -0.25, "qn": -0.5, "chosen_count": 0,
                                  "rejected_count": 1}
    # k limits each side; without decode the id is the token's text
    top1 = qd.top_tokens(k=1)
    assert [r["token"] for r in top1["chosen"]] == ["4"] and [r["token"] for r in top1["rejected"]] == ["2"]


def test_top_tokens_ties_in_id_order_and_decode_called_per_token():
    # Q = [0, 1/2, -1/2, 1/2, -1/2]: ties on both sides
    qd = QDiff.build([[1, 3]], [[2, 4]], 5)
    calls = []

    def decode(i):
        calls.append(i)
        return chr(ord("a") + i)

    top = qd.top_tokens(k=5, decode=decode)
    assert [r["id"] for r in top["chosen"]] == [1, 3]
    assert [r["id"] for r in top["rejected"]] == [2, 4]
    assert [r["token"] for r in top["chosen"] + top["rejected"]] == ["b", "d", "c", "e"]
    assert sorted(calls) == [1, 2, 3, 4]  # token 0 (Q = 0) is on neither side


def test_top_tokens_plot_writes_png(tmp_path):
    from deft_plugin.utils.plots import plot_top_tokens

    path = plot_top_tokens(_hand().top_tokens(k=5, decode=lambda i: f"tok{i}"), tmp_path / "plots" / "qdiff_top.png")
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_built_from_real_replies_with_tiny_tokenizer(tiny_tokenizer):
    """Q over the tiny tokenizer's encoding of real HH-RLHF replies."""
    from deft_plugin.data.encoding import encode_rows
    from deft_plugin.data.formats.hh_rlhf import parse

    from builders import hh_rows

    pairs, _ = encode_rows([parse(r, "chat_template") for r in hh_rows(64)], tiny_tokenizer)
    special = tiny_tokenizer.all_special_ids
    qd = QDiff.build([p.chosen_ids for p in pairs], [p.rejected_ids for p in pairs], len(tiny_tokenizer), special)
    assert all(int(qd.chosen_counts[i]) == 0 and int(qd.rejected_counts[i]) == 0 for i in special)
    assert float(qd.q[special].abs().sum()) == 0.0  # every reply ends in <|im_end|>, counted nowhere
    assert abs(float(qd.q.sum())) < 1e-12
    assert float(qd.qn.abs().max()) == 1.0
    n_chosen = sum(sum(t not in special for t in p.chosen_ids) for p in pairs)
    assert qd.meta["chosen_tokens"] == n_chosen
    top = qd.top_tokens(5, decode=lambda i: tiny_tokenizer.decode([i]))
    assert len(top["chosen"]) == 5 and len(top["rejected"]) == 5
    assert all(r["q"] > 0 for r in top["chosen"]) and all(r["q"] < 0 for r in top["rejected"])
    assert top["chosen"][0]["qn"] == 1.0 or top["rejected"][0]["qn"] == -1.0
