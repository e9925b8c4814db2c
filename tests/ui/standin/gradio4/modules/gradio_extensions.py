"""Stand-in of Forge Neo 2.26's ``webui/modules/gradio_extensions.py`` (exo101/sd-webui-forge-neo-v3
5692d2d; lllyasviel's Forge dfdcbab the same here), as far as the component callbacks go: every
component's ``__init__`` is patched so that, after the original,
``script_callbacks.after_component_callback(self, **kwargs)`` runs with the keywords the
constructor got. The harness imports it for Neo's page only (Neo imports it at startup).
Left out: the tooltip, the css classes, the before-component callbacks, the callbacks of the
script runner being built."""
import gradio as gr

from modules import script_callbacks


def IOComponent_init(self, *args, **kwargs):
    res = original_IOComponent_init(self, *args, **kwargs)

    script_callbacks.after_component_callback(self, **kwargs)

    return res


original_IOComponent_init = gr.components.Component.__init__
gr.components.Component.__init__ = IOComponent_init
