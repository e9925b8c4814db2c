"""Stand-in of the WebUI's Settings tab, ``modules/ui_settings.py``: AUTOMATIC1111
stable-diffusion-webui v1.10.1 (commit 82a973c04367123ae98bd9abdf80d9eda9b910e2;
``get_value_for_setting`` and ``create_setting_component`` are the same from v1.6.0 to ``dev``),
Forge Classic 5136ce20 and Forge Neo 2.26 (``webui/modules/ui_settings.py``): the functions kept
here are the same in all of them, but for what no extension option meets (Neo's ``gr.State`` and
``FormRow`` components, the checkpoint and VAE keys that Neo's ``run_settings`` skips). Written
for these tests from a reading of those files. What an extension's option goes through:

- ``create_setting_component``: the control is ``info.component(label=, value=, elem_id=
  "setting_<key>", **component_args)`` (a quicksetting the same, in the row at the top);
- the page load refreshes every control in one event (``add_functionality``'s ``demo.load``):
  ``get_value_for_setting`` gives ``gr.update(value=<current value>, **component_args)`` (less
  ``precision``), which gradio 3 turns into ``<Component>.update(**...)`` and gradio 4 into a new
  component made from the constructor's arguments and those;
- an option in a section named None (the host's hidden options) gets no control;
- "Apply settings" sends every control's value to ``run_settings``, which checks each against the
  default's type and stores it; a quicksetting's change goes to ``run_settings_single``, which
  answers with ``get_value_for_setting`` again.

Left out: refresh buttons (no extension option here has one), the Defaults/Sysinfo/Actions/
Licenses tabs, the search box, the "Change checkpoint" button; and ``wrap_gradio_call``
around "Apply settings", which turns an exception into an error message on the page: here it
reaches the test.
"""
import gradio as gr

from modules import shared
from modules.shared import opts


def get_value_for_setting(key):
    value = getattr(opts, key)

    info = opts.data_labels[key]
    args = info.component_args() if callable(info.component_args) else info.component_args or {}
    args = {k: v for k, v in args.items() if k not in {'precision'}}

    return gr.update(value=value, **args)


def create_setting_component(key, is_quicksettings=False):
    def fun():
        return opts.data[key] if key in opts.data else opts.data_labels[key].default

    info = opts.data_labels[key]
    t = type(info.default)

    args = info.component_args() if callable(info.component_args) else info.component_args

    if info.component is not None:
        comp = info.component
    elif t == str:
        comp = gr.Textbox
    elif t == int:
        comp = gr.Number
    elif t == bool:
        comp = gr.Checkbox
    else:
        raise Exception(f'bad options item type: {t} for key {key}')

    elem_id = f"setting_{key}"
    return comp(label=info.label, value=fun(), elem_id=elem_id, **(args or {}))


class UiSettings:
    submit = None
    result = None
    components = None
    component_dict = None
    dummy_component = None
    quicksettings_list = None
    quicksettings_names = None
    text_settings = None

    def run_settings(self, *args):
        changed = []

        for key, value, comp in zip(opts.data_labels.keys(), args, self.components):
            assert comp == self.dummy_component or opts.same_type(value, opts.data_labels[key].default), f"Bad value for setting {key}: {value}; expecting {type(opts.data_labels[key].default).__name__}"

        for key, value, comp in zip(opts.data_labels.keys(), args, self.components):
            if comp == self.dummy_component:
                continue

            if opts.set(key, value):
                changed.append(key)

        opts.save(shared.config_filename)
        return opts.dumpjson(), f'{len(changed)} settings changed{": " if changed else ""}{", ".join(changed)}.'

    def run_settings_single(self, value, key):
        if not opts.same_type(value, opts.data_labels[key].default):
            return gr.update(visible=True), opts.dumpjson()

        if value is None or not opts.set(key, value):
            return gr.update(value=getattr(opts, key)), opts.dumpjson()

        opts.save(shared.config_filename)

        return get_value_for_setting(key), opts.dumpjson()

    def create_ui(self, dummy_component, quicksettings_list):
        """``quicksettings_list``: the option "Quicksettings list" (``opts.quicksettings_list``)."""
        self.components = []
        self.component_dict = {}
        self.dummy_component = dummy_component

        with gr.Column(elem_id="tab_settings"):  # the host: a gr.Blocks, rendered as the page's Settings tab
            with gr.Row():
                self.submit = gr.Button(value="Apply settings", variant='primary', elem_id="settings_submit")

            self.result = gr.HTML(elem_id="settings_result")

            self.quicksettings_names = {x: i for i, x in enumerate(quicksettings_list) if x != 'quicksettings'}
            self.quicksettings_list = []

            previous_section = None
            current_tab = None
            current_row = None
            with gr.Tabs(elem_id="settings"):
                for i, (k, item) in enumerate(opts.data_labels.items()):
                    section_must_be_skipped = item.section[0] is None

                    if previous_section != item.section and not section_must_be_skipped:
                        elem_id, text = item.section

                        if current_tab is not None:
                            current_row.__exit__()
                            current_tab.__exit__()

                        gr.Group()
                        current_tab = gr.TabItem(elem_id=f"settings_{elem_id}", label=text)
                        current_tab.__enter__()
                        current_row = gr.Column(elem_id=f"column_settings_{elem_id}", variant='compact')
                        current_row.__enter__()

                        previous_section = item.section

                    if k in self.quicksettings_names:
                        self.quicksettings_list.append((i, k, item))
                        self.components.append(dummy_component)
                    elif section_must_be_skipped:
                        self.components.append(dummy_component)
                    else:
                        component = create_setting_component(k)
                        self.component_dict[k] = component
                        self.components.append(component)

                if current_tab is not None:
                    current_row.__exit__()
                    current_tab.__exit__()

                self.text_settings = gr.Textbox(elem_id="settings_json", value=lambda: opts.dumpjson(), visible=False)

    def add_quicksettings(self):
        with gr.Row(elem_id="quicksettings", variant="compact"):
            for _i, k, _item in sorted(self.quicksettings_list, key=lambda x: self.quicksettings_names.get(x[1], x[0])):
                component = create_setting_component(k, is_quicksettings=True)
                self.component_dict[k] = component

    def add_functionality(self, demo):
        self.submit.click(
            fn=lambda *args: self.run_settings(*args),
            inputs=self.components,
            outputs=[self.text_settings, self.result],
        )

        for _i, k, _item in self.quicksettings_list:
            component = self.component_dict[k]
            info = opts.data_labels[k]

            if isinstance(component, gr.Textbox):
                methods = [component.submit, component.blur]
            elif hasattr(component, 'release'):
                methods = [component.release]
            else:
                methods = [component.change]

            for method in methods:
                method(
                    fn=lambda value, k=k: self.run_settings_single(value, key=k),
                    inputs=[component],
                    outputs=[component, self.text_settings],
                    show_progress=info.refresh is not None,
                )

        component_keys = [k for k in opts.data_labels.keys() if k in self.component_dict]

        def get_settings_values():
            return [get_value_for_setting(key) for key in component_keys]

        demo.load(
            fn=get_settings_values,
            inputs=[],
            outputs=[self.component_dict[k] for k in component_keys],
            queue=False,
        )
