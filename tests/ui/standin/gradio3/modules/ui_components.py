"""Stand-in of ``InputAccordion`` as in AUTOMATIC1111 stable-diffusion-webui v1.10.1
(commit 82a973c04367123ae98bd9abdf80d9eda9b910e2), ``modules/ui_components.py``. Written for
these tests from a reading of that file, keeping what the page and the ASAG UI depend on:

- a ``gr.Checkbox`` subclass: its value (bool) is what the Script receives;
- the checkbox itself is hidden and takes the id ``<id>-checkbox``;
- a ``gr.Accordion`` with the id ``<id>``, class ``input-accordion``, open when the value is true,
  is what the user sees; the controls go inside it (``with InputAccordion(...) as enabled:``);
- a change of the checkbox calls the page's ``inputAccordionChecked(id, checked)``;
- without an elem_id the ids come from a class-wide counter.
"""
import gradio as gr


class InputAccordion(gr.Checkbox):
    global_index = 0

    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get("elem_id")
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordion.global_index}"
            InputAccordion.global_index += 1

        super().__init__(value, **dict(kwargs, elem_id=f"{self.accordion_id}-checkbox", visible=False))
        self.change(fn=None, inputs=[self], _js=f'function(checked){{ inputAccordionChecked("{self.accordion_id}", checked); }}')

        self.accordion = gr.Accordion(
            **dict(kwargs, elem_id=self.accordion_id, label=kwargs.get("label", "Accordion"), elem_classes=["input-accordion"], open=value)
        )

    def extra(self):
        """A column shown in the accordion's header."""
        return gr.Column(elem_id=f"{self.accordion_id}-extra", elem_classes="input-accordion-extra", min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"
