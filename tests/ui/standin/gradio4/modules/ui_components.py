"""Stand-in of ``InputAccordion`` as in lllyasviel/stable-diffusion-webui-forge at commit
dfdcbab685e57677014f05a3309b48cc87383167, ``modules/ui_components.py``, written for these tests
from a reading of that file. The interface is A1111's (see ../../gradio3/modules/ui_components.py);
what differs under gradio 4:

- ``InputAccordion(value, **kwargs)`` is a function that builds ``InputAccordionImpl`` with
  ``setup=True``; gradio 4 re-creates components from their constructor arguments, and then
  (``setup=False``) the class must behave as a plain checkbox;
- ``__init__`` carries ``gr.Checkbox.__init__``'s signature (``functools.wraps``): gradio 4 builds
  a component's config from the constructor's parameters, so without it the hidden checkbox
  would reach the page with no elem_id and no visibility;
- the change event passes ``js=`` (Forge rewrites the gradio-3 ``_js=`` into it in
  ``modules/gradio_extensions.py``; this stand-in has no such shim, so it says ``js`` directly);
- ``modules/gradio_extensions.py``, imported first, sets ``gradio.component_meta.updateable`` to
  the identity, so this class's own ``__init__`` records no constructor arguments: when a paste
  returns ``gr.update(value=...)``, gradio re-creates the component from what
  ``gr.Checkbox.__init__`` recorded (no ``setup``), which builds a plain checkbox.
"""
from functools import wraps

import gradio as gr
import gradio.component_meta

gradio.component_meta.updateable = lambda init: init  # as modules/gradio_extensions.py does


class InputAccordionImpl(gr.Checkbox):
    global_index = 0

    @wraps(gr.Checkbox.__init__)
    def __init__(self, value=None, setup=False, **kwargs):
        if not setup:
            super().__init__(value=value, **kwargs)
            return

        self.accordion_id = kwargs.get("elem_id")
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordionImpl.global_index}"
            InputAccordionImpl.global_index += 1

        super().__init__(value=value, **dict(kwargs, elem_id=f"{self.accordion_id}-checkbox", visible=False))
        self.change(fn=None, inputs=[self], js=f'function(checked){{ inputAccordionChecked("{self.accordion_id}", checked); }}')

        self.accordion = gr.Accordion(
            **dict(kwargs, elem_id=self.accordion_id, label=kwargs.get("label", "Accordion"), elem_classes=["input-accordion"], open=value)
        )

    def extra(self):
        return gr.Column(elem_id=f"{self.accordion_id}-extra", elem_classes="input-accordion-extra", min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"


def InputAccordion(value=None, **kwargs):
    return InputAccordionImpl(value=value, setup=True, **kwargs)
