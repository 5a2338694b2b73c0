"""Stage 2: simulated exits, forced halt-and-copy training, the planner, the pipe switch."""
import pytest
import spacy
import torch

from spacy_early_exit.encoder.exits import simulate_exit_layers
from spacy_early_exit.encoder.model import EarlyExitEncoder
from spacy_early_exit.encoder.planner import ExitPlanner, TrainingSettings
from spacy_early_exit.testing import TINY_FINE_TUNING, make_ner_nlp, ner_examples, tiny_backbone
from test_encoder import BATCH, make_batch


def loop_simulation(u, mask, thresholds, windows):
    """Reference: one row, one layer at a time, plain Python."""
    n_layers, n_rows, _ = u.shape
    out = torch.zeros(mask.shape, dtype=torch.long)
    for r in range(n_rows):
        n = int(mask[r].sum())
        active = [True] * n
        for l in range(n_layers):
            if l == n_layers - 1:
                for i in range(n):
                    if active[i]:
                        out[r, i] = n_layers
                break
            settled = [u[l, r, i].item() if active[i] else 0.0 for i in range(n)]
            k = windows[r].item()
            leave = []
            for i in range(n):
                peak = max(settled[max(0, i - k) : i + k + 1])
                if active[i] and (peak < thresholds[r, l] or thresholds[r, l] >= 1.0):
                    leave.append(i)
            for i in leave:
                active[i] = False
                out[r, i] = l + 1
    return out


def test_simulation_matches_a_plain_loop():
    torch.manual_seed(0)
    u = torch.rand(4, 3, 7)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    thresholds = torch.tensor([[0.5] * 4, [0.3, 0.3, 0.9, 0.9], [0.0, 1.0, 0.0, 0.0]])
    windows = torch.tensor([1, 0, 3])
    expected = loop_simulation(u, mask, thresholds, windows)
    assert torch.equal(simulate_exit_layers(u, mask, thresholds, windows), expected)


def test_forced_exits_copy_states_upwards():
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    batch = make_batch(**BATCH)
    all_first = batch.word_mask.long()
    forced = all_first.clone()
    forced[0, :3] = 4  # three words run to the top, the rest halt after layer 1
    with torch.no_grad():
        mixed = encoder(batch, all_layers=True, exit_layers=forced)
        frozen = encoder(batch, all_layers=True, exit_layers=all_first)
        full = encoder(batch, all_layers=True)
    rows, cols = batch.word_mask.nonzero(as_tuple=True)
    halted = forced[rows, cols] == 1
    for layer in range(4):
        # A halted word keeps its layer-1 state, so every upper ramp reads the same state.
        torch.testing.assert_close(mixed.layer_logits[layer][halted], frozen.layer_logits[layer][halted])
    torch.testing.assert_close(mixed.layer_logits[0], full.layer_logits[0])
    # Words that keep running see halted neighbours only as keys: they differ from full depth.
    assert not torch.allclose(mixed.layer_logits[3][~halted], full.layer_logits[3][~halted])
    assert torch.equal(mixed.exit_layers, forced)


def test_planner_sandwich_and_modes():
    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    batch = make_batch(lengths=[12] * 10, words=[[1, 2, 4, 5, 8, 10]] * 10)
    settings = TrainingSettings.from_config({"mode": "self_sampling", "sandwich": [0.2, 0.4], "thresholds": [0.99]})
    plan = ExitPlanner(settings, encoder)(batch)
    assert plan.exit_layers.shape == batch.word_pieces.shape
    # 4 of 10 rows run at full depth whatever their uncertainty.
    full_rows = (plan.exit_layers[batch.word_mask].view(10, 6) == 4).all(dim=1)
    assert int(full_rows.sum()) >= 4
    random = ExitPlanner(TrainingSettings.from_config({"mode": "random"}), encoder)(batch)
    values = random.exit_layers[batch.word_mask]
    assert values.min() >= 1 and values.max() <= 4 and len(values.unique()) > 1
    assert random.reference_logits is None


@pytest.mark.parametrize(
    "cfg, key",
    [({"mode": "stage2"}, "training.mode"), ({"loss": "l2"}, "training.loss"), ({"windows": [-1]}, "training.windows"),
     ({"thresholds": [2.0]}, "training.thresholds"), ({"sandwich": [0.8, 0.5]}, "training.sandwich"), ({"epochs": 3}, "Unknown"),
     ({"distill_weight": -0.5}, "training.distill_weight"), ({"distill_temperature": 0}, "training.distill_temperature")],
)
def test_training_settings_validation(cfg, key):
    with pytest.raises(ValueError, match=key):
        TrainingSettings.from_config(cfg)


@pytest.mark.parametrize("mode, loss, distill", [
    ("self_sampling", "ce", 0.0), ("self_sampling", "flooding", 0.0), ("random", "ce", 0.0), ("self_sampling", "ce", 1.0),
])
def test_stage2_continues_from_stage1(tiny_model_dir, tmp_path, mode, loss, distill):
    stage1 = make_ner_nlp(tiny_model_dir, steps=10, temperatures=[0.25] * 4)
    stage1.to_disk(tmp_path / "stage1")
    nlp = spacy.blank("en")
    nlp.add_pipe("tokee_ner", config={
        "model": {"name": "no-such-backbone-needed"}, "fine_tuning": dict(TINY_FINE_TUNING),
        "training": {"mode": mode, "loss": loss, "thresholds": [0.3, 0.6, 0.9], "distill_weight": distill},
    })
    examples = ner_examples(nlp)
    nlp.get_pipe("tokee_ner").initialize(lambda: examples, nlp=nlp, init_from=str(tmp_path / "stage1"))
    ner = nlp.get_pipe("tokee_ner")
    assert ner.labels == stage1.get_pipe("tokee_ner").labels
    # Same weights as stage 1 before any stage-2 update.
    text = "John Smith lives in New York ."
    stage1.get_pipe("tokee_ner").exit_mode = ner.exit_mode = "off"
    assert [e.text for e in nlp(text).ents] == [e.text for e in stage1(text).ents]
    optimizer = nlp.create_optimizer()
    losses = [nlp.update(examples, sgd=optimizer)["tokee_ner"] for _ in range(12)]
    assert all(loss_value >= 0 for loss_value in losses)
    if loss == "ce":
        assert losses[-1] < losses[0]
    assert ner._planner is not None and ner._planner.settings.mode == mode
    assert ner.training.distill_weight == distill


def test_stage1_distillation_trains_and_adds_to_the_loss(tiny_model_dir):
    import dataclasses

    distilled = make_ner_nlp(tiny_model_dir, steps=0, training={"distill_weight": 1.0, "distill_temperature": 2.0})
    examples = ner_examples(distilled)
    ner = distilled.get_pipe("tokee_ner")
    output, _ = ner.model.begin_update(([eg.predicted for eg in examples], None, None))
    with_term, _ = ner.get_loss(examples, output)
    settings = ner.training
    ner.training = dataclasses.replace(settings, distill_weight=0.0)
    without, _ = ner.get_loss(examples, output)
    ner.training = settings
    assert with_term > without  # the same forward pass: the difference is the KL term
    optimizer = distilled.create_optimizer()
    losses = [distilled.update(examples, sgd=optimizer)["tokee_ner"] for _ in range(12)]
    assert losses[-1] < losses[0]


def test_init_from_rejects_a_pipeline_without_the_component(tiny_model_dir, tmp_path):
    spacy.blank("en").to_disk(tmp_path / "empty")
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("tokee_ner", config={"model": {"name": str(tiny_model_dir)}})
    with pytest.raises(ValueError, match="init_from"):
        ner.initialize(lambda: ner_examples(nlp), nlp=nlp, init_from=str(tmp_path / "empty"))


def test_reference_logits_are_cached_per_row_and_match_a_fresh_forward():
    from spacy_early_exit.encoder.planner import select_rows

    encoder = EarlyExitEncoder(tiny_backbone("bert"), 5).eval()
    batch = make_batch(**BATCH)
    planner = ExitPlanner(TrainingSettings.from_config({"mode": "self_sampling", "loss": "flooding"}), encoder)
    first = planner(select_rows(batch, [1]))
    assert len(planner.cache) == 1
    plan = planner(batch)  # row 1 from the cache, rows 0 and 2 computed
    assert len(planner.cache) == 3
    with torch.no_grad():
        fresh = torch.stack(encoder(batch, all_layers=True).layer_logits)
    torch.testing.assert_close(plan.reference_logits, fresh)
    torch.testing.assert_close(first.reference_logits, fresh[:, 6:9])
