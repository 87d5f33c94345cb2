"""Every session-state key the pages use, in one place, with what it holds.

Widget keys (key=...) are session state too: Streamlit keeps a widget's value under its key while
its page is shown and drops it when the page is left, so what must outlive a page switch lives in
a key of its own (model_cfg, train_cfg, arch_budget, tr_run). A key ending in "_" is a prefix: the
rest is a run's name or a field's. tests/test_structure.py fails when a page uses a key not listed.
"""

SHARED = {
    "model_cfg": "the model chosen on Architecture, as ModelConfig.to_dict(); the Train page trains it",
    "train_cfg": "the recipe last set on Train (a TrainConfig); Architecture's A/B form starts from it",
    "link_read": "the page's URL has been read for a design (once per session)",
    "link_problem": "why a link's design was not opened, shown once",
}

ARCHITECTURE = {
    "arch_preset": "preset picker: loads a preset's layer list and its recipe",
    "arch_bn": "template: BatchNorm after every 3x3 conv",
    "arch_w": "template: the six width sliders, arch_w0 .. arch_w5",
    "arch_dropout": "template: dropout after every ReLU",
    "arch_widths": "template: the six widths typed as text",
    "arch_spec": "the layer list's one-line text form (JSON accepted too)",
    "arch_layers_": "the layer list as an editable table (st.data_editor); the number is arch_layers_n",
    "arch_layers_n": "a counter in the table's key: a new model gives the editor fresh rows",
    "arch_recipe_from": "the preset whose recipe the Train page now starts from",
    "arch_tab": "the open tab under the text form: the layer table or its editor",
    "arch_torchinfo": "show torchinfo's printed summary",
    "arch_template_shown": "what the template column was drawn from: a fragment rerun compares it",
    "arch_error": "why the last edit was refused, shown over the last valid model",
    "arch_budget": "the parameter budget (kept across pages)",
    "arch_budget_input": "the budget's number box",
    "ab_epochs": "A/B form: epochs",
    "ab_size": "A/B form: training images",
}

TRAIN = {
    "tr_preset": "preset picker: loads a preset's model and recipe",
    "tr_": "one widget per TrainConfig field (tr_epochs, tr_lr, ...)",
    "tr_size": "training images (0 = all)",
    "tr_test_size": "test images (0 = all)",
    "tr_name": "the new run's name",
    "tr_run": "the run the page follows",
    "tr_started": "'Started ...' message, shown once after the rerun that follows Start",
    "tr_was_running": "the run seen running, to rerun the whole page once when it ends",
    "tr_milestones": "multistep's milestones as typed, e.g. 5,10",
    "tr_seeds": "'Repeat with seeds' as typed, e.g. 1,2,3: a group of runs",
    "tr_whole_range": "the live accuracy chart: the whole range instead of the goal's band",
    "tr_live_figures": "the live view's last figures, re-sent unchanged until the next rebuild",
    "tr_lrfind_run": "button: run the LR range test", "tr_lrfind": "the last range test's curve and suggestion",
    "tr_use_lr": "button: take the suggested rate", "lrfind_chart": "chart",
    "tr_preset_name": "name to save the model and recipe under", "tr_preset_about": "its description",
    "tr_preset_save": "button", "tr_preset_saved": "'Saved ...' message, shown once after the rerun that follows Save", "tr_preset_delete_choice": "which of your presets to delete",
    "tr_preset_delete": "button",
    "loss_curve": "chart", "acc_curve": "chart", "batch_curve": "chart", "lr_curve": "chart",
}

DRAW = {
    "draw_model": "the model that reads the drawing",
    "draw_upload": "checkpoint uploader",
    "draw_uploads": "checkpoints uploaded this session: label -> bytes",
    "draw_upload_error": "why the last uploaded checkpoint was refused",
    "draw_photo": "photo or scan of a digit on paper",
    "draw_stroke": "pen width",
    "draw_many": "the models compared on one drawing",
    "canvas_n": "a counter in the canvas key: Clear gives a fresh canvas",
    "canvas_": "the drawing canvas",
    "hw_label": "the digit a saved drawing is", "hw_save": "save the drawing as handwriting",
    "probs": "chart", "many_probs": "chart", "filters": "chart", "saliency": "chart",
}

RUNS = {
    "runs_compare": "the runs whose curves are overlaid",
    "runs_meets": "filter: only runs that meet the goal", "runs_budget": "filter: only runs under the budget",
    "runs_tags": "filter: runs with these tags", "runs_find": "filter: text in the name, group or architecture",
    "runs_group": "the group of seeds shown", "runs_group_whole": "the group chart: the whole range",
    "runs_whole": "the compare chart: the whole range", "group_chart": "chart",
    "notes_": "a run's notes, per run", "tags_": "a run's tags as typed, per run", "notes_save_": "button",
    "rename_": "a run's new name, per run", "rename_go_": "button", "renamed": "'Renamed ...' message after the rerun",
    "runs_next": "the run to choose in the run box on the next rerun (after a rename)",
    "runs_one": "the run shown in full",
    "cmp_loss": "chart", "cmp_acc": "chart", "cmp_lr": "chart",
    "ab_a": "A/B comparison: run A", "ab_b": "A/B comparison: run B", "ab_loss": "chart", "ab_acc": "chart",
    "confirm_delete": "the run whose deletion waits for a yes",
    "del_ask": "button", "del_yes": "button", "del_no": "button",
    "dl_": "download buttons per file",
    "cm_": "confusion matrix chart, per run", "cm_clicked_": "the cell last clicked on it, per run",
    "cell_": "the confusion cell whose digits are shown, per run", "per_": "per-digit accuracy chart, per run",
    "more_": "epochs to continue for, per run", "resume_": "Continue button, per run",
    "sched_": "the continued run's learning rate: constant, cosine tail or the schedule again, per run",
    "resumed_": "'Started ...' message after Continue, per run",
    "zip_": "archive download, per run", "ts_": "TorchScript download, per run",
    "onnx_": "ONNX download, per run", "py_": "script download, per run", "nb_": "notebook download, per run",
}

SWEEP = {
    "sw_from": "the space a new sweep starts from: an example or a sweep already run",
    "sw_templates": "the layer-list templates, one per line", "sw_rows": "the searched settings the table starts from",
    "sw_params_": "the table of searched settings (st.data_editor); the number is sw_params_n",
    "sw_params_n": "a counter in the table's key: a loaded space gives the editor fresh rows",
    "sw_preset": "the preset whose recipe the trials start from", "sw_epochs": "epochs per trial",
    "sw_train": "training images per trial (0 = all)", "sw_test": "test images (0 = all)",
    "sw_recipe_rest": "the loaded space's other recipe settings, kept as they are",
    "sw_budget": "the parameter budget", "sw_objective": "accuracy or params", "sw_goal": "the goal, test %",
    "sw_grace": "ASHA's grace epochs (0: no early stopping)", "sw_trials": "trials", "sw_concurrent": "trials at once",
    "sw_address": "a Ray cluster's address (empty: local)", "sw_name": "the new sweep's name",
    "sw_about": "the loaded space's description", "sw_download": "button",
    "sw_shown": "the sweep shown", "sw_seen_running": "the running sweep last shown, to show a new one once",
    "sw_stop": "button", "sw_resume": "button", "sw_chart": "chart", "sw_table": "the trial table",
}

KEYS = {**SHARED, **ARCHITECTURE, **TRAIN, **DRAW, **RUNS, **SWEEP}


def declared(key: str) -> bool:
    """Whether `key` (or, for a key made from a name, its prefix) is listed here."""
    return key in KEYS or any(k.endswith("_") and key.startswith(k) for k in KEYS) or (
        key.rstrip("0123456789") in KEYS)
