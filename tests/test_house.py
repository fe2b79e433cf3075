"""The house rules a newcomer relies on (issue 25): one list of settings, a named API, the run's life in one
place, imports that point one way."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from vit import runs
from vit.train import TrainConfig
from vit.train.config import DEFAULTS, SETTINGS, Setting, in_form

ROOT = Path(__file__).resolve().parents[1]
VIT = ROOT / "vit"

# settings whose names are words of other modules as well (a model, a seed, a device, the data), or that describe
# the model and its pixels, which prediction, export and the run views read too: used in many places by design
USED_WIDELY = {"model", "pretrained", "weights", "img_size", "patch_size", "model_args", "epochs", "batch_size", "lr",
               "crop_pct", "progressive", "hflip", "seed", "val_fraction", "device", "threads", "workers", "data",
               "recipe", "quick", "lp_ft", "teacher"}


def test_a_training_knob_is_named_in_at_most_three_files_of_vit():
    texts = {p: p.read_text() for p in VIT.rglob("*.py")}
    over = {}
    for name in set(SETTINGS) - USED_WIDELY:
        where = sorted(str(p.relative_to(ROOT)) for p, t in texts.items() if re.search(rf"\b{name}\b", t))
        if len(where) > 3:
            over[name] = where
    assert not over, f"settings named in more than 3 files (the config, the recipe and their use): {over}"


def test_every_field_of_trainconfig_describes_itself():
    for name, s in SETTINGS.items():
        assert isinstance(s, Setting)
        if s.kind:  # a number has a range that the validation message gives
            assert s.lo is not None and s.hi is not None and s.lo <= s.hi and s.title, name
            default = DEFAULTS.get(name)
            assert default is None and s.optional or s.lo <= default <= s.hi, name
        if s.form or s.card:
            assert s.title, f"{name} is shown to people: it needs a title"
    with pytest.raises(ValueError, match=r"Warm-up epochs \(warmup_epochs\) must be from 0 to 1000 \(got -1\)"):
        TrainConfig(warmup_epochs=-1).check()


def test_the_command_line_is_made_from_the_settings():
    from vit.cli import _given_settings, _parser
    args = _parser().parse_args(["train", "--data", "d", "--ema", "0.99", "--warmup-epochs", "2", "--no-pretrained",
                                 "--class-balance", "off", "--randaugment", "--early-stopping", "0"])
    given = _given_settings(args)
    assert given["ema_decay"] == 0.99 and given["warmup_epochs"] == 2 and given["pretrained"] is False
    assert given["class_balance"] == "off" and given["randaugment"] is True
    assert given["early_stopping"] is None  # 0: off
    # a setting the recipe chooses is not given when its flag is left out; one with a default always is
    assert not {"epochs", "batch_size", "lr", "img_size", "progressive", "lp_ft", "quick"} & set(given)
    assert given["weight_decay"] == DEFAULTS["weight_decay"] and given["seed"] == DEFAULTS["seed"]
    flags = {a.dest for a in _train_actions()}
    assert flags >= {n for n, s in SETTINGS.items() if s.flag != ""}
    assert not flags & {n for n, s in SETTINGS.items() if s.flag == "" and n != "data"}  # (--data: where from)


def _train_actions():
    from vit.cli import _parser
    sub = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices["train"]._actions


def test_the_card_shows_every_setting_that_has_a_card_label():
    from vit.hub.card import _settings
    record = {**DEFAULTS, "img_size_used": 64, "layer_decay_used": 0.75, "ema_decay": 0.999, "model_args": {"depth": 2},
              "img_size": None}
    shown = dict(_settings(record))
    labelled = {s.card for n, s in SETTINGS.items() if s.card and record.get(f"{n}_used", record.get(n)) is not None}
    assert set(shown) == labelled and shown["image size"] == 64 and shown["EMA decay"] == 0.999
    quick = dict(_settings({**record, "quick": True}))
    assert set(quick) == {s.card for s in SETTINGS.values() if s.card and s.quick} & labelled


def test_the_api_names_every_parameter_and_the_form_is_the_settings():
    from vit import ui
    assert ui.FORM == ("model", "scratch", *in_form("main"), "teacher", *in_form("advanced"))  # (the teacher: a run)
    app = ui.build_app()
    named = app.get_api_info()["named_endpoints"]
    unnamed = {e: [p["parameter_name"] for p in v["parameters"] if p["parameter_name"].startswith("param_")]
               for e, v in named.items()}
    assert not any(unnamed.values()), unnamed
    start = [p["parameter_name"] for p in named["/start_training"]["parameters"]]
    assert set(start) == {"owner", "run_name", *ui.FORM, *ui.WHERE}  # (where: here, or a Hugging Face GPU)
    assert [p["parameter_name"] for p in named["/check_classes"]["parameters"]] == list(ui.CLASS_SLOTS)


def test_run_states_and_kinds_are_data():
    assert runs.STATES == ("queued", "running", "completed", "failed", "cancelled", "interrupted")
    assert runs.RunState.RUNNING == "running" and f"{runs.RunState.FAILED}" == "failed"
    assert runs.kind_of({"quick": True}) is runs.RunKind.QUICK
    assert runs.kind_of({"pretrained": False}) is runs.RunKind.SCRATCH
    assert runs.kind_of({"pretrained": False, "weights": "/r"}) is runs.RunKind.FINE_TUNE
    assert int(runs.Exit.DISK_FULL) == 4 and runs.Exit.OK == 0


# The intended direction of imports (DESIGN.md): ui -> jobs -> train -> data, models, runs; predict -> models, runs;
# explain knows nothing of runs or the UI; nothing below ui imports gradio.
FORBIDDEN = {"vit.data": {"vit.train", "vit.jobs", "vit.ui", "vit.predict", "vit.hub", "vit.cli"},
             "vit.train": {"vit.jobs", "vit.ui", "vit.hub", "vit.cli"},
             "vit.jobs": {"vit.ui", "vit.hub", "vit.cli"},
             "vit.explain": {"vit.runs", "vit.ui", "vit.jobs", "vit.predict"},
             "vit.models": {"vit.ui", "vit.jobs", "vit.train", "vit.predict", "vit.runs"},
             "vit.runs": {"vit.ui", "vit.jobs", "vit.train", "vit.predict", "vit.hub", "vit.data"},
             "vit.predict": {"vit.ui", "vit.jobs", "vit.cli"},
             "vit.hub": {"vit.ui", "vit.jobs", "vit.cli"}}


def imports() -> dict[str, set[str]]:
    """Each module of vit and the modules of vit (and gradio) that it imports, at any depth of its code."""
    found = {}
    for path in VIT.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        found[module] = {n for n in names if n.startswith("vit") or n.split(".")[0] == "gradio"}
    return found


def test_imports_point_one_way_and_gradio_stays_in_the_ui():
    graph = imports()
    backwards = [(m, n) for m, names in graph.items() for n in names for low, banned in FORBIDDEN.items()
                 if (m == low or m.startswith(low + ".")) and any(n == b or n.startswith(b + ".") for b in banned)]
    assert not backwards, backwards
    gradio = [m for m, names in graph.items() if "gradio" in {n.split(".")[0] for n in names}
              and not m.startswith("vit.ui")]
    assert not gradio, gradio


def test_the_environment_is_read_in_one_place_and_the_readme_names_what_a_host_sets():
    from vit.env import VARIABLES, read
    reads = re.compile(r"os\.environ\.get\(|os\.environ\[|os\.getenv\(")
    elsewhere = [str(p.relative_to(ROOT)) for p in VIT.rglob("*.py")
                 if p.name != "env.py" and reads.search(p.read_text())]
    assert not elsewhere, f"environment variables read outside vit/env.py: {elsewhere}"
    with pytest.raises(KeyError, match="add it there"):
        read("VIT_SOMETHING_NEW")
    internal = {"VIT_NICE", "VIT_PARENT_PID", "VIT_THREADS"}  # the job manager sets these for its training process
    readme = (ROOT / "README.md").read_text()
    assert [v for v in VARIABLES if v.startswith("VIT_") and v not in internal and v not in readme] == []


def test_figures_quoted_to_users_come_from_one_place():
    from vit import figures
    for f in figures.ALL:
        assert (ROOT / f.bench).is_file() and f.measured, f
    quoted = re.compile(r"\d+(\.\d+)?%|\d+(\.\d+)?x (sooner|faster)")
    for path in (VIT / "train" / "recipe.py", VIT / "ui" / "dataset_view.py"):
        tree = ast.parse(path.read_text())
        scopes = (ast.Module, ast.FunctionDef, ast.ClassDef)
        docs = {id(n.body[0].value) for n in ast.walk(tree)  # docstrings are for developers
                if isinstance(n, scopes) and n.body and isinstance(n.body[0], ast.Expr)}
        texts = [n.value for n in ast.walk(tree)
                 if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]
        found = [t for t in texts if quoted.search(t) and "at least 70% of the image" not in t]
        assert not found, f"{path.name} quotes a measured figure of its own: {found} (put it in vit/figures.py)"
    from vit.train import recipe
    assert figures.LP_FT.text in recipe.LP_FT_NOTE
