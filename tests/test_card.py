from mnist_core.card import analysis


def epochs(*pairs, seconds=10.0):
    """(train_acc, test_acc) per epoch -> the epoch records a run writes."""
    return [{"epoch": i, "train_acc": tr, "test_acc": te, "seconds": seconds} for i, (tr, te) in enumerate(pairs, 1)]


def test_the_reference_runs_analysis_reads_like_its_card():
    # the reference log's last epochs: train ahead of test by more than the overfitting gap
    text = analysis(epochs((98.9, 99.1), (99.2, 99.2), (99.3, 99.25), (99.8, 99.3), (99.8, 99.3)), "finished", 5)
    assert "Best test accuracy 99.30% at epoch 4 of 5." in text
    assert "Model overfits: final train accuracy is 0.50 points above test accuracy." in text
    assert text[0] == "Misses 99.4% by 0.15 on epoch 3; and parameters unknown."  # the goal comes first
    assert "Last 3 epochs vary by 0.05 points (stable)." in text


def test_a_run_stopped_early_underfits_and_is_still_rising_not_overfitting_or_unstable():
    text = analysis(epochs((30.0, 28.0), (55.0, 48.4), (69.0, 66.02)), "stopped", 20)
    assert any(line.startswith("Model underfits: final train accuracy is only 69.00%") for line in text)
    assert not any("overfit" in line.lower() for line in text)
    assert "Test accuracy was still rising at the end: more epochs may help." in text
    assert not any(line.startswith("Last 3 epochs vary") for line in text)
    assert "Run was stopped after 3 of 20 epochs." in text


def test_a_level_curve_reports_its_stability_and_a_fall_after_the_best_epoch():
    text = analysis(epochs((99.0, 99.45), (99.2, 99.2), (99.3, 99.3), (99.3, 99.1)), "finished", 4)
    assert "Test accuracy fell 0.35 points after epoch 1: a decaying learning rate or regularisation would hold it." in text
    assert "Last 3 epochs vary by 0.20 points (unstable)." in text
    assert analysis(epochs((99.0, 99.45), (99.2, 99.2), (99.3, 99.3), (99.3, 99.1)), "finished", 4,
                    params=5000)[0] == "Misses 99.4% by 0.30 on epoch 4."


def test_test_above_train_is_explained_by_augmentation():
    text = analysis(epochs((98.0, 99.0), (98.5, 99.3), (98.6, 99.35)), "finished", 3, {"augment": 6.0})
    assert any(line.startswith("No overfitting: test accuracy is 0.75 points above train accuracy (augmentation")
               for line in text)


def test_dropout_anywhere_in_a_layer_list_explains_test_above_train():
    from mnist_core.card import render
    from mnist_core.config import ModelConfig

    rising = [dict(e, test_loss=0.1, train_loss=0.1) for e in epochs((98.0, 99.0), (98.5, 99.3), (98.6, 99.35))]
    for text, why in (("conv8 bn relu drop0.05 maxpool conv16 relu gap conv10k1", "(augmentation or dropout"),
                      ("conv8 bn relu maxpool conv16 relu gap conv10k1", "(train accuracy is averaged")):
        cfg = {"name": "r", "model": ModelConfig.parse(text).to_dict(), "train": {"epochs": 3}, "params": 1}
        card = render(cfg, rising, "finished")
        assert f"Train model {text} (1 params)" in card
        assert "test accuracy is 0.75 points above train accuracy " + why in card, card
