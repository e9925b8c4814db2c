"""Stands for modules/scripts.py of v1.10.1: the Script base class, and the runner's calls of the
AlwaysOn hooks (each in a try/except that only logs, as the host's ScriptRunner does)."""
import logging

log = logging.getLogger("standin.scripts")
scripts_data = []  # ScriptClassData entries; X/Y/Z's module is found here


class AlwaysVisible:
    pass


class Script:
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    infotext_fields = None
    paste_field_names = None

    def title(self):
        raise NotImplementedError()

    def elem_id(self, item_id):
        # "script_" + tab + "_" + sanitised lowercase title + "_" + item_id (scripts.py Script.elem_id)
        title = "".join(c for c in self.title().lower().replace(" ", "_") if c.isalnum() or c == "_")
        tab = f"{self.tabname}_" if self.tabname else ""
        return f"script_{tab}{title}_{item_id}"


class ScriptRunner:
    """The AlwaysOn part of ScriptRunner: hooks get ``p.script_args[args_from:args_to]``."""

    def __init__(self, scripts):
        self.alwayson_scripts = []
        position = 1  # slot 0 is the selectable-script dropdown
        for script in scripts:
            script.alwayson = True
            script.args_from = position
            script.args_to = position + script.n_args
            position = script.args_to
            self.alwayson_scripts.append(script)

    def _each(self, hook, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            method = getattr(script, hook, None)
            if method is None:
                continue
            try:
                method(p, *extra, *p.script_args[script.args_from:script.args_to], **kwargs)
            except Exception:
                log.exception("error running %s: %s", hook, script.filename)

    def process(self, p):
        self._each("process", p)

    def process_before_every_sampling(self, p, **kwargs):
        self._each("process_before_every_sampling", p, **kwargs)

    def before_hr(self, p):
        self._each("before_hr", p)

    def postprocess(self, p, processed):
        self._each("postprocess", p, processed)

    def on_mask_blend(self, p, mba):
        pass
