"""Stand-in of Forge Neo 2.26's model selectors, ``webui/modules_forge/main_entry.py``
(exo101/sd-webui-forge-neo-v3 5692d2d; Haoming02's neo branch has the same selectors and events,
the preset once a ``gr.Radio``). Written for these tests from a reading of that file, keeping what
decides which model the page is set for:

- ``make_checkpoint_manager_ui`` (called in the quicksettings row of the page, after the tabs'
  scripts were built) makes the "UI Preset" dropdown (``forge_ui_preset``, its value the option
  ``forge_preset``) and the "Checkpoint" dropdown (``setting_sd_model_checkpoint``, empty until
  the page load fills its choices); the user's pick of a checkpoint (``input``) stores it
  (``checkpoint_change``);
- ``forge_main_entry`` (at the end of the page) wires the preset: its change stores it and sets
  the checkpoint selector to the preset's own checkpoint (``on_preset_change``), then stores that
  (``_load_presets``); the page load does the same (``Context.root_block.load``).

The model itself is loaded only at the next generation. Left out: the VAE / text encoder and
dtype selectors, the API model mode, the other settings a preset changes, saving the options to
the settings file and refreshing the loading parameters.
"""
import gradio as gr
from gradio.context import Context

from modules import sd_models, shared
from modules_forge.presets import PresetArch

ui_forge_preset: gr.Dropdown
ui_checkpoint: gr.Dropdown


def make_checkpoint_manager_ui():
    global ui_forge_preset, ui_checkpoint

    ui_forge_preset = gr.Dropdown(
        label="UI Preset",
        value=lambda: shared.opts.forge_preset,
        choices=PresetArch.choices(),
        elem_id="forge_ui_preset",
    )

    ui_checkpoint = gr.Dropdown(
        label="Checkpoint",
        value=None, choices=None,
        elem_id="setting_sd_model_checkpoint",
        elem_classes=["model_selection"],
    )

    def refresh_model_list():
        return gr.update(choices=refresh_models())

    Context.root_block.load(fn=refresh_model_list, outputs=[ui_checkpoint], queue=False)

    ui_checkpoint.input(checkpoint_change, inputs=[ui_checkpoint, ui_forge_preset], queue=False, show_progress=False)


def refresh_models():
    return sorted(sd_models.checkpoints_list)


def checkpoint_change(ckpt_name: str, preset: str, save=True, refresh=True) -> bool:
    """`ckpt_name` accepts valid aliases; returns `True` if checkpoint changed"""
    new_ckpt_info = sd_models.get_closet_checkpoint_match(ckpt_name)
    current_ckpt_info = sd_models.get_closet_checkpoint_match(getattr(shared.opts, "sd_model_checkpoint", ""))
    if new_ckpt_info == current_ckpt_info:
        return False

    shared.opts.set("sd_model_checkpoint", ckpt_name)
    if preset is not None:
        shared.opts.set(f"forge_checkpoint_{preset}", ckpt_name)
    return True


def forge_main_entry():
    ui_forge_preset.change(on_preset_change, inputs=[ui_forge_preset], outputs=[ui_checkpoint], queue=False, show_progress=False).success(
        fn=_load_presets,
        inputs=[ui_checkpoint, ui_forge_preset],
        queue=False,
        show_progress=False,
    )
    Context.root_block.load(on_preset_change, inputs=[ui_forge_preset], outputs=[ui_checkpoint], queue=False, show_progress=False)


def _load_presets(ui_checkpoint: str, ui_forge_preset: str):
    checkpoint_change(ui_checkpoint, ui_forge_preset, save=True, refresh=True)


def on_preset_change(preset: str):
    assert preset is not None
    shared.opts.set("forge_preset", preset)

    return gr.update(value=getattr(shared.opts, f"forge_checkpoint_{preset}", shared.opts.sd_model_checkpoint))
