"""The from-scratch recipe (vit.train.recipe) and progressive resizing: chosen from the data, explained, recorded,
and always second to what the user set. The accuracy it reaches lives in bench/scratch_bench.py."""
import json
from dataclasses import replace

import gradio as gr
import pytest
import torch

from vit import cli, predict, runs
from vit.data import load_dataset
from vit.samples import make_shapes_dataset
from vit.train import TrainConfig, progressive_sizes, recipe, train
from vit.train.recipe import DataFacts

from helpers import on_new_models

SCANS = DataFacts(train_images=1440, classes=10, side=32, grayscale=True)  # digit scans, enlarged to 32 px
SHAPES = DataFacts(train_images=1200, classes=3, side=96)     # the app's sample data
PHOTOS = DataFacts(train_images=20000, classes=10, side=375)  # many photos


def scratch(**given):
    return TrainConfig(pretrained=False, **given)


def test_small_images_keep_their_size_with_a_4x4_grid_a_small_model_and_a_higher_rate():
    c = recipe.choose(scratch(), SCANS)
    assert (c.img_size, c.patch_size) == (32, 8)
    assert c.model_args == {"embed_dim": 96, "depth": 6, "num_heads": 3, "class_token": False, "global_pool": "max"}
    assert c.lr == pytest.approx(1e-3) and c.batch_size == 32 and c.early_stopping is None and c.crop_pct == 1.0
    assert c.crop_padding == 4  # pad-and-crop: nothing of the object is cut away
    assert c.hflip == 0  # grey scans: a mirrored digit is another glyph
    # about 200 updates per class: 2,000 updates of 45 batches an epoch (1,440 images) is 45 epochs, 4 warming up
    assert c.epochs == 45 and c.warmup_epochs == 4 and c.progressive is False
    text = "\n".join(c.recipe)
    for said in ("Image size 32 px", "not enlarged", "Patch size 8", "4x4 grid", "96 wide", "lr 0.001 for batch 32",
                 "max pooling", "45 epochs: about 2025 updates", "pad 4 px", "No flips", "keep the centre square",
                 "No early stopping"):
        assert said in text, (said, text)


def test_larger_images_are_shrunk_not_kept_and_cropped_gently():
    c = recipe.choose(scratch(), SHAPES)
    assert c.img_size == 32 and c.patch_size == 8
    assert "typically 96 px" in c.recipe[0]
    assert c.crop_padding == 4  # inputs of 32 px are small: padded and cropped
    assert c.hflip == 0.5  # colour pictures are flipped
    assert c.epochs == 16 and c.lr == pytest.approx(1e-3)  # 600 updates (the floor) of 38 batches an epoch
    assert (c.color_jitter, c.crop_scale_min, c.label_smoothing) == (0.4, 0.7, 0.1)  # TrainConfig's jitter kept
    big = recipe.choose(scratch(), PHOTOS)
    assert (big.img_size, big.patch_size) == (64, 8)  # 8x8 tokens, a larger model, for many images
    assert big.model_args == {"embed_dim": 192, "depth": 8, "num_heads": 3, "class_token": False,
                              "global_pool": "max"} and big.crop_padding == 0
    assert (big.batch_size, big.lr, big.epochs) == (64, pytest.approx(2e-3), 15)  # the rate follows the batch
    assert big.crop_scale_min == 0.7 and any("at least 70%" in n for n in big.recipe)
    assert big.progressive and not c.progressive  # an 8x8 grid grows from 4x4; a 4x4 one is not shrunk
    assert recipe.choose(scratch(patch_size=4), SCANS, given={"patch_size"}).progressive


def test_tiny_images_are_not_enlarged_past_the_smallest_grid():
    c = recipe.choose(scratch(), DataFacts(train_images=300, classes=4, side=20))
    assert (c.img_size, c.patch_size) == (20, 5)
    assert recipe.choose(scratch(), DataFacts(300, 4, 8)).img_size == 16


def test_what_the_user_sets_always_wins():
    given = dict(epochs=3, lr=5e-4, img_size=48, patch_size=6, model_args={"depth": 2}, early_stopping=4)
    c = recipe.choose(scratch(**given), SCANS, given=given)
    assert (c.epochs, c.lr, c.img_size, c.patch_size, c.model_args, c.early_stopping) == (3, 5e-4, 48, 6,
                                                                                         {"depth": 2}, 4)
    assert not any(n.startswith(("Image size", "Patch size", "A small model")) for n in c.recipe)
    # a batch size given: the rate follows it
    assert recipe.choose(scratch(batch_size=64), SCANS, given={"batch_size"}).lr == pytest.approx(
        2 * recipe.choose(scratch(), SCANS).lr)


def test_fine_tuning_keeps_its_recipe_starts_with_lp_ft_and_no_data_is_said():
    tuned = recipe.choose(TrainConfig(), SHAPES)
    assert tuned == replace(TrainConfig(), lp_ft=True, recipe=[recipe.LP_FT_NOTE])
    # LP-FT is the recipe's unless the user says otherwise, and a quick model has nothing to fine-tune
    assert recipe.choose(TrainConfig(lp_ft=False), SHAPES, given={"lp_ft"}) == TrainConfig()
    assert recipe.choose(TrainConfig(weights="run", quick=True), SHAPES) == TrainConfig(weights="run", quick=True)
    guessed = recipe.choose(scratch(), None)
    assert guessed.recipe[0].startswith("No dataset yet") and guessed.img_size == 32


def test_the_facts_of_a_dataset(tmp_path):
    folder = make_shapes_dataset(tmp_path / "d", per_class=5, size=(48, 40))
    with load_dataset(folder) as ds:
        facts = DataFacts.of(ds)
    assert facts == DataFacts(train_images=len(ds.train), classes=3, side=40)
    assert DataFacts.from_dict(facts.to_dict()) == facts and DataFacts.from_dict({"side": "x"}) is None


def test_progressive_sizes_grow_by_whole_patches_to_the_final_size():
    sizes = progressive_sizes(32, 4, 10)
    assert sizes[0] == 16 and sizes[-4:] == [32] * 4
    assert sizes == sorted(sizes) and all(s % 4 == 0 for s in sizes)
    assert progressive_sizes(64, 8, 5)[0] == 32
    assert progressive_sizes(32, 8, 5) == [32] * 5  # a 4x4 grid is not shrunk: 2x2 tokens learn next to nothing


def test_a_progressive_run_trains_small_then_saves_a_model_for_the_final_size(tmp_path, monkeypatch):
    folder = make_shapes_dataset(tmp_path / "d", per_class=6, size=32)
    config = TrainConfig(pretrained=False, img_size=32, patch_size=4, epochs=3, batch_size=8, progressive=True,
                         crop_padding=4, crop_pct=1.0, model_args={"depth": 1, "embed_dim": 32, "num_heads": 2})
    seen = _record_inputs(monkeypatch)
    with load_dataset(folder) as ds:
        metrics = train(ds, config, tmp_path / "run")
    assert [row["img_size"] for row in metrics["history"]] == [16, 24, 32]
    # the batches the model received: each epoch's training batches at its size, validation at the final size
    trained = [size for training, size in seen if training]
    steps = len(trained) // 3
    assert steps >= 2 and trained == [16] * steps + [24] * steps + [32] * steps, trained
    assert {size for training, size in seen if not training} == {32}
    saved = runs.read_config(tmp_path / "run")
    assert saved["pretrained_cfg"]["crop_pct"] == 1.0 and saved["pretrained_cfg"]["input_size"] == [3, 32, 32]
    loaded = predict.load_model(str(tmp_path / "run"))
    x = loaded.preprocess(predict.read_image(next((folder / "circle").iterdir())))
    assert x.shape[-1] == 32  # the whole image at the final size (crop_pct 1.0)
    with loaded.borrow() as model, torch.no_grad():
        assert model(x).shape == (1, 3)


def _record_inputs(monkeypatch) -> list[tuple[bool, int]]:
    """(training?, image side) of every batch the models of the runs trained in this test receive."""
    seen = []
    on_new_models(monkeypatch, lambda model: model.register_forward_pre_hook(
        lambda module, args: seen.append((module.training, args[0].shape[-1]))))
    return seen


def test_the_cli_prints_and_records_the_recipe_and_keeps_the_flags_given(tmp_path, capsys):
    folder = make_shapes_dataset(tmp_path / "d", per_class=6, size=32)
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(folder), "--no-pretrained", "--epochs", "1", "--out", str(out),
                     "--model-arg", "depth=1", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "From scratch: the recipe chose" in err and "Image size 32 px" in err
    record = json.loads((out / "config.json").read_text())["vit_studio"]
    assert record["epochs"] == 1 and record["model_args"] == {"depth": 1}  # given: kept
    assert record["img_size"] == 32 and record["patch_size"] == 8 and record["lr"] == pytest.approx(1e-3)
    assert any("Patch size 8" in line for line in record["recipe"])


def test_the_app_plans_the_same_recipe_and_shows_it_before_start():
    from vit import ui
    facts = SHAPES.to_dict()
    config = ui.planned_config(ui.DEFAULT_MODEL, True, None, None, None, facts)
    assert config == recipe.choose(TrainConfig(model=ui.DEFAULT_MODEL, pretrained=False), SHAPES)
    line = ui.run_plan(None, {"path": "x", "name": "shapes", "facts": facts}, model=ui.DEFAULT_MODEL, scratch=True)
    assert line.startswith("**Will train:**") and "32 px images" in line
    assert "Chosen for your data" in line and "- Patch size 8" in line
    # what the visitor fills in wins, and is no longer listed as chosen
    mine = ui.planned_config(ui.DEFAULT_MODEL, True, 5, None, 0.002, facts, img_size=48, progressive="on")
    assert (mine.epochs, mine.lr, mine.img_size, mine.progressive) == (5, 0.002, 48, True)
    assert not any(n.startswith(("Image size", "AdamW")) for n in mine.recipe)
    # fine-tuning keeps its defaults, and only LP-FT is said to be chosen
    tuned = ui.planned_config(ui.DEFAULT_MODEL, False, None, None, None, facts)
    assert (tuned.epochs, tuned.lr, tuned.recipe) == (TrainConfig().epochs, TrainConfig().lr, [recipe.LP_FT_NOTE])


def test_the_form_reads_empty_as_auto_and_typed_text_as_given():
    from vit import ui
    facts = SHAPES.to_dict()
    auto = ui.planned_config(ui.DEFAULT_MODEL, True, "", " auto ", "", facts, img_size="", warmup_epochs="")
    assert auto == ui.planned_config(ui.DEFAULT_MODEL, True, None, None, None, facts)
    typed = ui.planned_config(ui.DEFAULT_MODEL, True, "7", "16", "2e-3", facts, early_stopping="0")
    assert (typed.epochs, typed.batch_size, typed.lr, typed.early_stopping) == (7, 16, 0.002, None)
    with pytest.raises(gr.Error, match=r"Epochs \(epochs\) must be a number from 1 to 1000 \(got 'ten'\)"):
        ui.planned_config(ui.DEFAULT_MODEL, True, "ten", None, None, facts)


def test_the_sample_data_size_is_bounded():
    from vit import ui
    for hostile in (10 ** 9, -5, float("nan"), "500"):
        with pytest.raises(gr.Error, match=f"from 2 to {ui.SAMPLE_MAX} images per class"):
            ui.sample_dataset(hostile)


def test_imbalanced_classes_turn_on_class_balance_with_a_reason_and_a_given_value_wins():
    skewed = replace(SHAPES, imbalance=recipe.BALANCE_FROM)
    for start in (scratch(), TrainConfig()):  # from scratch and fine-tuning alike
        c = recipe.choose(start, skewed)
        assert c.class_balance == "on" and any(n.startswith("Class-balanced sampling: the largest class has 3.0x")
                                               for n in c.recipe), c.recipe
        assert recipe.choose(start, replace(SHAPES, imbalance=2.9)).class_balance == "auto"
        kept = recipe.choose(replace(start, class_balance="off"), skewed, given={"class_balance"})
        assert kept.class_balance == "off" and not any("Class-balanced" in n for n in kept.recipe)
    assert recipe.balancing("auto", [30, 10]) == recipe.BALANCE_BY and recipe.balancing("auto", [29, 10]) is None
    assert recipe.balancing("off", [100, 1]) is None and recipe.balancing("sampling", [1, 1]) == "sampling"
    weights = recipe.class_weights([30, 10, 0])
    assert weights == pytest.approx([40 / 60, 2.0, 0.0]) and 30 * weights[0] + 10 * weights[1] == pytest.approx(40)
    with pytest.raises(Exception, match="class_balance must be one of auto, on, off"):
        TrainConfig(class_balance="maybe").check()


def test_the_form_and_the_cli_set_class_balance(tmp_path, capsys):
    from vit import ui
    facts = replace(SHAPES, imbalance=5.0).to_dict()
    assert ui.planned_config(ui.DEFAULT_MODEL, True, None, None, None, facts).class_balance == "on"
    off = ui.planned_config(ui.DEFAULT_MODEL, True, None, None, None, facts, class_balance="off")
    assert off.class_balance == "off"
    assert "Class-balanced sampling" in ui.run_plan(None, {"path": "x", "name": "s", "facts": facts},
                                                model=ui.DEFAULT_MODEL, scratch=True)
    folder = make_shapes_dataset(tmp_path / "d", per_class=6, size=32)
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(folder), "--no-pretrained", "--epochs", "1", "--out", str(out),
                     "--model-arg", "depth=1", "--threads", "1", "--class-balance", "on"]) == 0
    record = json.loads((out / "config.json").read_text())["vit_studio"]
    assert record["class_balance"] == "on" and record["class_balance_used"] == recipe.BALANCE_BY
    assert record["class_weights"] == pytest.approx([1.0, 1.0, 1.0])
