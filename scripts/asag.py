"""ASAG, the AlwaysOn script: glue between the WebUI's script hooks and the ``asag`` package.

The engine lives elsewhere: ``asag`` (host-free core) and ``asag.hosts`` (one adapter per host).
This file only reads the controls, hands them on, and registers callbacks once at import.
"""
from modules import script_callbacks, scripts, shared  # "import scripts", not "from ... import Script": see a1111.md 1.1

from asag.hosts import detect, infotext, job, model_view, settings, xyz
from asag.log import logger

HOST = detect.detect_host()
ADAPTER = detect.adapter_for(HOST)
logger.info("running on %s", detect.host_name(HOST))
# Forge Neo: the block control in view follows the model selected on the page (asag/hosts/ui.py).
FOLLOWER = None
if model_view.follows_model(HOST):
    from asag.hosts import ui as follower_ui

    FOLLOWER = follower_ui.ModelFollower()
    script_callbacks.on_after_component(FOLLOWER.capture)


class AsagScript(scripts.Script):
    sorting_priority = 15

    def title(self):
        return "ASAG"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        # No side effects: the API calls this again to read the defaults. gradio is imported here
        # only: processing (API calls, tests) never needs it.
        from modules.ui_components import InputAccordion

        from asag.hosts import ui

        # Defaults from Settings > ASAG, read on every call, so the API's defaults follow them at once.
        defaults = settings.current_defaults(shared.opts)
        components, self.infotext_fields, self.paste_field_names = ui.build_ui(self, InputAccordion, defaults, FOLLOWER)
        return components

    def process(self, p, *args):
        # The Settings tab's values, read now: the defaults fill the fields an API call leaves out.
        ADAPTER.start_job(p, job.start(p, args, settings.current_defaults(shared.opts)), settings.host_options(shared.opts))

    def process_before_every_sampling(self, p, *args, **kwargs):
        ADAPTER.before_sampling(p)

    def before_hr(self, p, *args):
        ADAPTER.before_hr(p)

    def postprocess(self, p, processed, *args):
        ADAPTER.end_job(p)


ADAPTER.register_callbacks(script_callbacks)
script_callbacks.on_infotext_pasted(infotext.fill_pasted_params)
script_callbacks.on_before_ui(xyz.add_axes)
script_callbacks.on_ui_settings(settings.on_ui_settings)
