"""Stand-in of the X/Y/Z plot script's axis controls: AUTOMATIC1111 stable-diffusion-webui v1.10.1
(commit 82a973c04367123ae98bd9abdf80d9eda9b910e2) ``scripts/xyz_grid.py``; Forge Classic 5136ce20
``extensions-builtin/xyz/scripts/xyz_grid.py`` with ``lib_xyz/classes.py`` (the same code, but
``fill`` answers ``gr.skip()``, which is ``gr.update()`` in gradio 3); Forge Neo 2.26
``webui/scripts/xyz_grid.py`` (``gr.update`` where gradio 3's hosts call ``gr.Button.update`` and
``gr.Textbox.update``, which gradio 4 lacks). Written for these tests from a reading of those
files. The harness loads it by path, as the WebUI loads a script, and adds the extension's axes
to ``axis_options`` as ``asag.hosts.xyz.add_axes`` does.

What an extension's axis goes through on the page: choosing it in "X type" (a dropdown of the
axis labels whose value is the index) calls ``select_axis``, which for an axis with ``choices``
shows a multiselect dropdown of ``choices()`` and the fill button, and otherwise the text box;
the fill button puts ``choices()`` into the dropdown (or, in text mode, the text box).
Kept: the X row (Y and Z are the same code), the text-mode checkbox, two built-in axes. Left out:
the other options, the swap buttons, the infotext fields, running the plot.
"""
import csv
import re
from io import StringIO
from itertools import chain

import gradio as gr

GRADIO_MAJOR = int(gr.__version__.split(".")[0])
fill_values_symbol = "\U0001f4d2"  # 📒


def ToolButton(**kwargs):  # modules/ui_components.py: a gr.Button with the class "tool"
    return gr.Button(elem_classes=["tool"], **kwargs)


def do_nothing(p, x, xs):
    pass


def apply_field(field):
    def fun(p, x, xs):
        setattr(p, field, x)
    return fun


def list_to_csv_string(data_list):
    with StringIO() as o:
        csv.writer(o).writerow(data_list)
        return o.getvalue().strip()


def csv_string_to_list_strip(data_str):
    return list(map(str.strip, chain.from_iterable(csv.reader(StringIO(data_str), skipinitialspace=True))))


class AxisOption:
    def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


axis_options = [
    AxisOption("Nothing", str, do_nothing),
    AxisOption("Seed", int, apply_field("seed")),
]


class Script:
    is_img2img = False

    def title(self):
        return "X/Y/Z plot"

    def elem_id(self, item_id):  # modules/scripts.py Script.elem_id, for a script shown on both tabs
        title = re.sub(r'[^a-z_0-9]', '', re.sub(r'\s', '_', self.title().lower()))
        return f"script_{'img2img' if self.is_img2img else 'txt2img'}_{title}_{item_id}"

    def ui(self, is_img2img):
        self.current_axis_options = [x for x in axis_options if type(x) == AxisOption or x.is_img2img == is_img2img]

        with gr.Row():
            x_type = gr.Dropdown(label="X type", choices=[x.label for x in self.current_axis_options], value=self.current_axis_options[1].label, type="index", elem_id=self.elem_id("x_type"))
            x_values = gr.Textbox(label="X values", lines=1, elem_id=self.elem_id("x_values"))
            x_values_dropdown = gr.Dropdown(label="X values", visible=False, multiselect=True, interactive=True)
            fill_x_button = ToolButton(value=fill_values_symbol, elem_id="xyz_grid_fill_x_tool_button", visible=False)
        csv_mode = gr.Checkbox(label='Use text inputs instead of dropdowns', value=False, elem_id=self.elem_id("csv_mode"))

        def fill(axis_type, csv_mode):
            axis = self.current_axis_options[axis_type]
            if axis.choices:
                if csv_mode:
                    return list_to_csv_string(axis.choices()), gr.update()
                else:
                    return gr.update(), axis.choices()
            else:
                return gr.update(), gr.update()

        fill_x_button.click(fn=fill, inputs=[x_type, csv_mode], outputs=[x_values, x_values_dropdown])

        def select_axis(axis_type, axis_values, axis_values_dropdown, csv_mode):
            axis_type = axis_type or 0  # if axle type is None set to 0

            choices = self.current_axis_options[axis_type].choices
            has_choices = choices is not None

            if has_choices:
                choices = choices()
                if csv_mode:
                    if axis_values_dropdown:
                        axis_values = list_to_csv_string(list(filter(lambda x: x in choices, axis_values_dropdown)))
                        axis_values_dropdown = []
                else:
                    if axis_values:
                        axis_values_dropdown = list(filter(lambda x: x in choices, csv_string_to_list_strip(axis_values)))
                        axis_values = ""

            if GRADIO_MAJOR == 3:  # A1111, Classic
                return (gr.Button.update(visible=has_choices), gr.Textbox.update(visible=not has_choices or csv_mode, value=axis_values),
                        gr.update(choices=choices if has_choices else None, visible=has_choices and not csv_mode, value=axis_values_dropdown))
            return (gr.update(visible=has_choices), gr.update(visible=not has_choices or csv_mode, value=axis_values),  # Neo
                    gr.update(choices=choices if has_choices else None, visible=has_choices and not csv_mode, value=axis_values_dropdown))

        x_type.change(fn=select_axis, inputs=[x_type, x_values, x_values_dropdown, csv_mode], outputs=[fill_x_button, x_values, x_values_dropdown])

        self.fill_button = fill_x_button  # for the harness to click
        return [x_type, x_values, x_values_dropdown, csv_mode]
